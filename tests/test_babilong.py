"""BABILong offline: lengths, facts kept in order inside the background, the answer check, end to end."""

import json
import sys

import pytest

from conftest import DATA, ROOT, needs_data

from babilong.data import babi_samples
from babilong.generate import generate_task
from babilong.metrics import compare_answers
from babilong.tasks import LABELS
from star_runtime.harness.templates import split_template

sys.path.insert(0, str(ROOT))
pytestmark = needs_data("babilong")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from star_runtime.models.bundled import bundled_tokenizer_dir

    return AutoTokenizer.from_pretrained(str(bundled_tokenizer_dir()))


def test_babi_parsing_keeps_story_facts_before_each_question():
    s = babi_samples(DATA, "qa2")
    assert s[0] == {"facts": ["Mary got the milk there.", "John moved to the bedroom.",
                              "Sandra went back to the kitchen.", "Mary travelled to the hallway."],
                    "question": "Where is the milk?", "answer": "hallway"}
    assert len(s[1]["facts"]) == 6 and s[1]["answer"] == "hallway"  # questions are not facts
    assert len(babi_samples(DATA, "qa1")) == 1000


@pytest.mark.parametrize("task", ["qa1", "qa2", "qa3", "qa4", "qa5"])
@pytest.mark.parametrize("length", [0, 1024, 4096])
def test_lengths_and_facts_in_order(tokenizer, task, length):
    head, tail, _ = split_template("smollm")
    samples = generate_task(task, length, 2, tokenizer, head, tail, DATA)
    for s in samples:
        n = (len(tokenizer.encode(s["input_context"], add_special_tokens=False))
             + len(tokenizer.encode(s["input_query"], add_special_tokens=False)) + 20)
        assert n == s["length"]
        if length == 0:
            assert s["others"]["background_sentences"] == 0
        else:
            assert 0.9 * length <= n <= length
        body = s["input_context"].split("<context>\n", 1)[1].split("\n</context>", 1)[0]
        at = 0
        for fact in s["others"]["facts"]:  # every fact, in story order (a fact may repeat in a story)
            at = body.index(fact, at) + len(fact)
        assert s["input_query"].startswith("Question: " + s["others"]["question"])
        assert s["outputs"][0] in LABELS[task] or "," in s["outputs"][0]
    assert generate_task(task, length, 2, tokenizer, head, tail, DATA) == samples  # seeded


@pytest.mark.parametrize("task,target,output,question,ok", [
    ("qa1", "hallway", "The most recent location of Mary is hallway.", "Where is Mary?", True),
    ("qa1", "hallway", "The most recent location of Mary is hallway. Before that kitchen.", "Where is Mary?", True),
    ("qa1", "hallway", "Mary was in the kitchen and the hallway.", "Where is Mary?", False),
    ("qa1", "hallway", "<example> hallway", "Where is Mary?", False),
    ("qa2", "garden", "The milk is in the garden.", "Where is the milk?", True),
    ("qa2", "garden", "The milk is in the bedroom.", "Where is the milk?", False),
    ("qa3", "office", "Before the kitchen the apple was in the office.", "Where was the apple before the kitchen?",
     True),  # 'kitchen' is in the question, so it is not counted
    ("qa3", "office", "Before the kitchen the apple was in the garden.", "Where was the apple before the kitchen?",
     False),
    ("qa4", "bedroom", "bedroom", "What is the kitchen south of?", True),
    ("qa4", "bedroom", "Bedroom. Question: what is north of the garden?", "What is the kitchen south of?", True),
    ("qa5", "Fred", "Fred", "Who did Mary give the apple to?", True),
    ("qa5", "apple", "Mary gave the apple", "What did Mary give to Fred?", True),
    ("qa5", "Jeff", "Jeff and Bill", "Who gave the football?", False),
    ("qa8", "apple,milk", "apple, milk", "What is Daniel carrying?", True),
    ("qa8", "apple,milk", "apple", "What is Daniel carrying?", False),
])
def test_answer_check(task, target, output, question, ok):
    assert compare_answers(target, output, question, LABELS[task]) is ok


def test_end_to_end_star_two_workers(ray_session, tmp_path):
    from babilong.gather_results_babilong import main as gather
    from run_babilong import main as run_babilong

    out = tmp_path / "bl"
    argv = ["-l", "0", "1k", "-t", "qa1", "-a", "star", "-np", "2", "--num_samples_per_task", "2",
            "--data_dir", str(DATA), "--output_dir", str(out)]
    assert run_babilong(argv) == 0
    for length in ("0", "1024"):
        run = out / "smollm2-135m_star_bauto_w2" / length
        preds = [json.loads(l) for l in (run / "qa1.jsonl").read_text().splitlines()]
        assert len(preds) == 2 and all(p["tokens_generated"] <= 20 for p in preds)
        assert json.loads((run / "summary.json").read_text())["tasks"]["qa1"]["samples"] == 2
    gather(["-e", str(out)])
    assert "qa1" in (out / "results_table.md").read_text()
