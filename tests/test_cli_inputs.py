"""Bad input gets one clear line (and exit code 2); a killed run resumes and writes each sample once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from star_runtime.cli import run_main
from star_runtime.infer import main as infer_main

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def run_cli(tmp_path, rows, *flags):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows)
    argv = ["--model_path", "random:tiny", "--input_path", str(inp), "--output_path", str(out),
            "--tokens_to_generate", "4", *flags]
    return run_main(infer_main, argv)


GOOD = {"input_context": "Some context words here.", "input_query": " A question?", "output": "x"}


@pytest.mark.parametrize("rows,flags,message", [
    ([{**GOOD, "input_context": ""}], [], "in.jsonl:1 (index 0): input_context is empty"),
    ([GOOD, {**GOOD, "input_query": "  "}], [], "in.jsonl:2 (index 1): input_query is empty"),
    ([GOOD], ["--block_size", "0"], "--block_size must be a positive number of tokens"),
    ([GOOD], ["--block_size", "-5"], "--block_size must be a positive number of tokens"),
    ([GOOD], ["--block_size", "16", "--anchor_block_size", "32"], "is larger than --block_size 16"),
    ([GOOD], ["--num_blocks", "-1"], "--num_blocks must be >= 0"),
    ([GOOD], ["--num_blocks", "4", "--block_size", "16"], "pass only one of them"),
    ([GOOD, '{"input_context": "a", '], [], "in.jsonl:2: not valid JSON"),
    ([GOOD, {"input_context": "abc"}], [], "in.jsonl:2: missing field 'input_query'"),
    ([{**GOOD, "input_context": "word " * 9000}], [], "exceeds the model window of 8192"),
    ([GOOD], ["--attn_type", "sparse"], None),  # argparse refuses unknown modes itself
])
def test_bad_input_one_clear_line(tmp_path, capsys, rows, flags, message):
    if message is None:
        with pytest.raises(SystemExit) as e:
            run_cli(tmp_path, rows, *flags)
        assert e.value.code == 2
        assert "invalid choice: 'sparse'" in capsys.readouterr().err
        return
    rc = run_cli(tmp_path, rows, *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: ") and message in err[-1], err
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_text() == ""


def test_output_fields(tmp_path):
    rows = [{"index": 7, **GOOD}, {"index": 9, **GOOD, "outputs": ["a", "b"], "length": 123}]
    assert run_cli(tmp_path, rows, "--attn_type", "dense") == 0
    recs = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["index"] for r in recs] == [7, 9]
    for key in ("index", "pred", "input_context", "input_query", "outputs", "others", "truncation", "length",
                "phase1_s", "ttft_s", "decode_tokens_per_s"):
        assert key in recs[0]
    assert recs[0]["outputs"] == ["x"] and recs[1]["outputs"] == ["a", "b"] and recs[1]["length"] == 123


def test_killed_run_resumes_and_writes_every_sample_once(tmp_path):
    rows = [{"index": i, "input_context": f"Context number {i}. " * 30, "input_query": f" Query {i}?"}
            for i in range(6)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows)
    cmd = [sys.executable, str(ROOT / "run_star_attn_inference.py"), "--model_path", "random:tiny",
           "--attn_type", "dense", "--input_path", str(inp), "--output_path", str(out),
           "--tokens_to_generate", "300", "--use_cache"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if out.exists() and out.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = out.read_text()
    assert 2 <= first.count("\n") < 6, "the run should be killed part way"
    with open(out, "a") as f:  # a torn line, as if killed mid-write
        f.write('{"index": 5, "pred": "trunc')
    assert run_main(infer_main, cmd[2:]) == 0  # the same command line resumed, in this process
    recs = [json.loads(l) for l in out.read_text().splitlines()]
    assert sorted(r["index"] for r in recs) == list(range(6))
    assert out.read_text().startswith(first)


def test_torchrun_ranks_match_single_worker(tmp_path):
    """The same worker code under torchrun (env:// rendezvous, gloo): ring on 2 ranks == dense on 1."""
    rows = [{"index": i, "input_context": f"Line {i} of a longer context. " * (10 + 7 * i),
             "input_query": f" Question {i}?"} for i in range(3)]
    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, rows)
    common = ["--model_path", "random:tiny", "--input_path", str(inp), "--tokens_to_generate", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dense_path = tmp_path / "dense.jsonl"
    # the single-worker reference runs in this process
    assert run_main(infer_main, [*common, "--attn_type", "dense", "--output_path", str(dense_path)]) == 0
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(29500 + os.getpid() % 1000), str(ROOT / "run_star_attn_inference.py"), *common,
                    "--attn_type", "ring", "-np", "2", "--launcher", "torchrun",
                    "--output_path", str(tmp_path / "ring.jsonl")], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dense = [json.loads(l) for l in dense_path.read_text().splitlines()]
    ring = [json.loads(l) for l in (tmp_path / "ring.jsonl").read_text().splitlines()]
    assert [r["index"] for r in ring] == [0, 1, 2]  # written once, by the query host only
    assert any(r["pred"] for r in dense)
    assert [r["pred"] for r in ring] == [r["pred"] for r in dense]
    assert all(sum(r["shard_tokens"]) == r["context_tokens"] and len(r["shard_tokens"]) == 2 for r in ring)
