"""The bad-input matrix: each case ends with one line `error: ...` naming the problem and the fix (exit code
2), before the model or any worker starts where the problem is known by then."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DATA, assert_same_steps, needs_data
from star_runtime.cli import run_main
from star_runtime.infer import main as infer_main
from star_runtime.config import parse_stop_words

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"input_context": "Some context words here.", "input_query": " A question?"}


def last_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines, "no error line"
    assert lines[-1].startswith("error: "), lines[-3:]
    return lines[-1]


def infer(inp, out, *flags):
    return run_main(infer_main, ["--model_path", "random:tiny", "--attn_type", "dense", "--input_path", str(inp),
                                 "--output_path", str(out), "--tokens_to_generate", "3", *flags])


@pytest.mark.parametrize("content,message", [
    (json.dumps({**GOOD, "index": [1, 2]}) + "\n", "in.jsonl:1: field 'index' must be an integer or a string"),
    (json.dumps({**GOOD, "index": {"a": 1}}) + "\n", "in.jsonl:1: field 'index' must be an integer or a string"),
    (json.dumps(GOOD) + "\n" + '{"input_context": "caf\xe9", "input_query": "?"}\n', "in.jsonl:2: not UTF-8 text"),
    ('{"input_context": "a \\ud800 b", "input_query": " q"}\n', "in.jsonl:1: holds a lone surrogate escape"),
])
def test_bad_input_lines(tmp_path, capsys, content, message):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(content.encode("latin-1") if "\xe9" in content else content.encode())
    assert infer(inp, tmp_path / "out.jsonl") == 2
    assert message in last_error(capsys)


def test_input_path_a_directory(tmp_path, capsys):
    assert infer(tmp_path, tmp_path / "out.jsonl") == 2
    assert "is a directory; give the jsonl file" in last_error(capsys)


def test_num_samples_zero_is_refused(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(GOOD) + "\n")
    assert infer(inp, tmp_path / "out.jsonl", "--num_samples", "0") == 2
    assert "--num_samples must be -1 (all samples) or >= 1" in last_error(capsys)


def test_model_folder_with_broken_config_or_no_weights(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(GOOD) + "\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{ not json")
    assert run_main(infer_main, ["--model_path", str(model), "--input_path", str(inp), "--output_path",
                                 str(tmp_path / "o.jsonl")]) == 2
    assert "has a config.json but no weights" in last_error(capsys)
    (model / "model.safetensors").write_bytes(b"\0" * 16)
    assert run_main(infer_main, ["--model_path", str(model), "--input_path", str(inp), "--output_path",
                                 str(tmp_path / "o.jsonl")]) == 2
    assert "its config.json cannot be used" in last_error(capsys)


def test_model_file_that_is_not_gguf(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(GOOD) + "\n")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf file")
    assert run_main(infer_main, ["--model_path", str(fake), "--input_path", str(inp), "--output_path",
                                 str(tmp_path / "o.jsonl")]) == 2
    assert "is not a GGUF file" in last_error(capsys)


def test_torchrun_launcher_outside_torchrun(tmp_path, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(GOOD) + "\n")
    assert infer(inp, tmp_path / "o.jsonl", "--launcher", "torchrun") == 2
    assert "RANK and WORLD_SIZE are not set: start the command with torchrun" in last_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_device_cuda_without_a_gpu(tmp_path, capsys, workers):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(GOOD) + "\n")
    assert run_main(infer_main, ["--model_path", "random:tiny", "--attn_type", "ring", "-np", workers,
                                 "--device", "cuda", "--input_path", str(inp), "--output_path",
                                 str(tmp_path / "o.jsonl")]) == 2
    assert "--device cuda, but this machine has no usable CUDA GPU" in last_error(capsys)


def test_unreachable_ray_address(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(GOOD) + "\n")
    res = subprocess.run([sys.executable, str(ROOT / "run_star_attn_inference.py"), "--model_path", "random:tiny",
                          "--attn_type", "ring", "-np", "2", "--ray_address", "127.0.0.1:1", "--input_path",
                          str(inp), "--output_path", str(tmp_path / "o.jsonl")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --ray_address 127.0.0.1:1: nothing answers at 127.0.0.1:1"), line


@needs_data("ruler")
def test_truncated_ruler_data_file(tmp_path, capsys):
    from run_ruler import main as run_ruler

    data = tmp_path / "data"
    (data / "ruler").mkdir(parents=True)
    text = (DATA / "ruler" / "PaulGrahamEssays.json").read_bytes()
    (data / "ruler" / "PaulGrahamEssays.json").write_bytes(text[: len(text) // 3])
    shutil.copytree(DATA / "nltk_data", data / "nltk_data")
    rc = run_main(run_ruler, ["-l", "512", "-t", "niah_single_2", "--num_samples_per_task", "1", "--data_dir",
                              str(data), "--prepare_only", "-d", str(tmp_path / "pregen")])
    assert rc == 2
    assert "PaulGrahamEssays.json is damaged or truncated" in last_error(capsys)


@needs_data("babilong")
def test_babilong_length_shorter_than_its_prompt(tmp_path, capsys):
    from run_babilong import main as run_babilong

    rc = run_main(run_babilong, ["-l", "100", "-t", "qa1", "--num_samples_per_task", "1", "--data_dir", str(DATA),
                                 "--prepare_only", "-d", str(tmp_path / "pregen")])
    assert rc == 2
    assert "qa1 at length 100: the prompt with its facts alone needs" in last_error(capsys)


def test_a_comma_can_be_a_stop_word():
    assert parse_stop_words("a,b") == ["a", "b"]
    assert parse_stop_words(r"Answer:,\,") == ["Answer:", ","]
    assert parse_stop_words(r"x\,y,,z\\") == ["x,y", "z\\"]
    assert parse_stop_words("") == []


def test_star_block_beyond_the_context_costs_the_context():
    from conftest import make_engine, random_ids, run_ids
    from star_runtime.modes.star import star_plan

    assert star_plan(163, 4096, -1, 2).block_size == 163
    assert star_plan(163, 100000, 512, 2).anchor == 163
    ctx, q = random_ids(163, 5), random_ids(4, 6)
    with make_engine(attn_type="dense") as eng:
        ref = run_ids(eng, ctx, q, 6)
    with make_engine(attn_type="star", block_size=100000) as eng:
        got = run_ids(eng, ctx, q, 6)
    assert got.tokens == ref.tokens and len(got.logits) == len(ref.logits) == 6
    assert_same_steps(got.logits, ref.logits, 1e-4)
