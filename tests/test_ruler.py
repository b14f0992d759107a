"""RULER offline: every generator fits the requested length and hides the answers in the prompt; seeded;
RULER's scoring; an end-to-end run (2 tasks, 1K, 2 samples, star on 2 workers) with predictions, scores and
the gathered table."""

import json
import re
import sys

import pytest

from conftest import DATA, ROOT, needs_data

from ruler.generate import generate_task
from ruler.scoring import score_task
from star_runtime.harness.scoring import postprocess_pred, string_match_all, string_match_part
from ruler.tasks import TASKS
from star_runtime.harness.templates import split_template

sys.path.insert(0, str(ROOT))
pytestmark = needs_data("ruler")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from star_runtime.models.bundled import bundled_tokenizer_dir

    return AutoTokenizer.from_pretrained(str(bundled_tokenizer_dir()))


def n_tokens(tok, s):
    return len(tok.encode(s["input_context"], add_special_tokens=False)) + \
        len(tok.encode(s["input_query"], add_special_tokens=False))


@pytest.mark.parametrize("length", [2048, 4096])
@pytest.mark.parametrize("task", TASKS)
def test_generator_fits_length_and_holds_answers(tokenizer, task, length):
    head, tail, _ = split_template("smollm")
    samples = generate_task(task, length, 2, tokenizer, head, tail, DATA)
    for s in samples:
        total = n_tokens(tokenizer, s) + s["tokens_to_generate"]
        assert total == s["length"] <= length
        assert total >= 0.9 * length, (task, total)  # slack: one haystack unit / document
        assert s["input_context"].startswith(head) and s["input_query"].endswith(tail)
        prompt = s["input_context"] + s["input_query"]
        assert s["outputs"] and all(isinstance(o, str) and o for o in s["outputs"])
        if task.startswith("qa"):
            assert any(o.lower() in prompt.lower() for o in s["outputs"]) or task == "qa_2"
        else:
            for o in s["outputs"]:
                assert o in prompt, (task, o)
    if task.startswith("niah"):
        needles = re.findall(r"One of the special magic \w+ for (\S+) is: (\S+)\.", samples[0]["input_context"])
        assert len(needles) >= len(samples[0]["outputs"])


def test_generation_is_seeded(tokenizer):
    head, tail, _ = split_template("base")
    a = generate_task("niah_multikey_1", 1024, 2, tokenizer, head, tail, DATA, seed=7)
    b = generate_task("niah_multikey_1", 1024, 2, tokenizer, head, tail, DATA, seed=7)
    c = generate_task("niah_multikey_1", 1024, 2, tokenizer, head, tail, DATA, seed=8)
    assert a == b and a != c


def test_too_short_length_for_hotpot_says_so(tokenizer):
    from star_runtime.config import ConfigError

    head, tail, _ = split_template("smollm")
    with pytest.raises(ConfigError, match="qa_2 cannot be fitted to 1024 tokens"):
        generate_task("qa_2", 1024, 1, tokenizer, head, tail, DATA)


def test_scoring_as_ruler_defines_it():
    # string_match_all: the fraction of references present, case-insensitive, averaged
    assert string_match_all(["The numbers are 123 and 456."], [["123", "456"]]) == 100.0
    assert string_match_all(["only 123"], [["123", "456"]]) == 50.0
    assert string_match_all(["ABC-def"], [["abc-DEF"]]) == 100.0
    assert string_match_all(["x", "123"], [["123"], ["123"]]) == 50.0
    # string_match_part: any reference present
    assert string_match_part(["Paris, France"], [["France", "French Republic"]]) == 100.0
    assert string_match_part(["London"], [["France", "Paris"]]) == 0.0
    assert postprocess_pred("  a\tb\x01c \n") == "a\nb\nc"
    recs = [{"pred": " 42\x00", "outputs": ["42"]}, {"pred": "", "outputs": ["7"]}]
    assert score_task("niah_single_1", recs) == {"score": 50.0, "nulls": "1/2", "samples": 2}
    assert score_task("qa_1", recs)["score"] == 50.0


def test_end_to_end_star_two_workers(ray_session, tmp_path):
    from ruler.gather_results_ruler import main as gather
    from run_ruler import main as run_ruler

    out, pregen = tmp_path / "results", tmp_path / "pregen"
    argv = ["-l", "1024", "-t", "niah_single_1", "vt", "-a", "star", "-np", "2", "--num_samples_per_task", "1",
            "--data_dir", str(DATA), "--output_dir", str(out), "-d", str(pregen)]
    # samples generated first without a model (as on a CPU machine), then run from -d
    assert run_ruler([*argv, "--prepare_only"]) == 0
    assert not out.exists()
    for task in ("niah_single_1", "vt"):
        assert len((pregen / "1024" / task / "validation.jsonl").read_text().splitlines()) == 1
    assert run_ruler(argv) == 0
    run = out / "smollm2-135m_star_bauto_w2" / "1024"
    assert not (run / "data").exists()  # the pre-generated samples were used
    for task in ("niah_single_1", "vt"):
        preds = [json.loads(l) for l in (run / f"{task}.jsonl").read_text().splitlines()]
        assert [p["index"] for p in preds] == [0] and all(p["num_workers"] == 2 for p in preds)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["tasks"]) == {"niah_single_1", "vt"} and summary["average"] is not None
    # a second run resumes: nothing is run again, every prediction stays once
    assert run_ruler(argv) == 0
    assert len((run / "vt.jsonl").read_text().splitlines()) == 1
    gather(["-e", str(out)])
    table = (out / "results_table.md").read_text()
    assert "niah_single_1" in table and "Average" in table and (out / "results_plot.png").stat().st_size > 1000


def test_run_folder_names_follow_the_reference():
    from star_runtime.config import RunConfig
    from star_runtime.harness.runner import run_name

    assert run_name("m", RunConfig(attn_type="dense")) == "m_dense"
    assert run_name("m", RunConfig(attn_type="star", block_size=4096)) == "m_star_b4ka4k"
    assert run_name("m", RunConfig(attn_type="star", block_size=4096, anchor_block_size=1000)) == "m_star_b4ka1000"
    assert run_name("m", RunConfig(attn_type="star", num_blocks=4)) == "m_star_4blocks"
    # settings that change answers are in the name: the worker count when the block follows it, the dtype
    assert run_name("m", RunConfig(attn_type="star", num_workers=2)) == "m_star_bauto_w2"
    assert run_name("m", RunConfig(attn_type="star", num_workers=1)) == "m_star_bauto_w1"
    assert run_name("m", RunConfig(attn_type="dense", dtype="bfloat16")) == "m_dense_bfloat16"
