"""Result files never lose a finished row and never mix runs: resume keeps every valid row wherever it
stands, one writer per file, output == input refused, a full disk ends the run in one line, a resume with
other settings or another input is refused, SIGTERM and kill -9 mid-run lose nothing."""

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from star_runtime.cli import run_main
from star_runtime.config import ConfigError
from star_runtime.infer import main as infer_main
from star_runtime.harness.results import ResultFile

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "run_star_attn_inference.py")


def rows(n, words=30):
    return [{"index": i, "input_context": f"Context number {i}. " * words, "input_query": f" Query {i}?"}
            for i in range(n)]


def write_jsonl(path, items):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in items))


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def cli(inp, out, *flags, tokens=4):
    return run_main(infer_main, ["--model_path", "random:tiny", "--attn_type", "dense", "--input_path", str(inp),
                                 "--output_path", str(out), "--tokens_to_generate", str(tokens), *flags])


def cmd(inp, out, *flags, tokens=4):
    return [sys.executable, SCRIPT, "--model_path", "random:tiny", "--attn_type", "dense", "--input_path", str(inp),
            "--output_path", str(out), "--tokens_to_generate", str(tokens), *flags]


def test_resume_keeps_every_valid_row_and_sets_aside_the_rest(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows(5))
    assert cli(inp, out) == 0
    good = out.read_text().splitlines()
    assert len(good) == 5
    # finished rows 0, 2, 4 with a blank line, a torn fragment, a foreign line and a duplicate between them
    damaged = [good[0], "", '{"index": 1, "pred": "tr', good[2], '{"note": "not a result"}', good[0], good[4]]
    out.write_text("\n".join(damaged) + "\n")
    assert cli(inp, out, "--use_cache") == 0
    err = capsys.readouterr().err
    assert "kept 3 finished rows" in err and "moved 3 lines" in err, err
    got = read_rows(out)
    assert sorted(r["index"] for r in got) == [0, 1, 2, 3, 4]
    kept = out.read_text().splitlines()
    assert kept[:3] == [good[0], good[2], good[4]]  # the finished rows stay byte for byte
    rejected = (tmp_path / "out.jsonl.rejected").read_text()
    assert '"pred": "tr' in rejected and "not a result" in rejected  # set aside, never deleted


def test_rows_without_index_are_set_aside_not_a_traceback(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows(2))
    write_jsonl(out, [{"pred": "x"}, {"pred": "y"}])
    assert cli(inp, out, "--use_cache") == 0
    assert "moved 2 lines" in capsys.readouterr().err
    assert sorted(r["index"] for r in read_rows(out)) == [0, 1]


def test_resume_with_other_settings_or_input_is_refused(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows(2))
    assert cli(inp, out) == 0
    before = out.read_text()
    assert cli(inp, out, "--use_cache", tokens=5) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds results of other settings" in line and "tokens_to_generate: 4 -> 5" in line, line
    assert run_main(infer_main, ["--model_path", "random:tiny", "--attn_type", "star", "--input_path", str(inp),
                                 "--output_path", str(out), "--tokens_to_generate", "4", "--use_cache"]) == 2
    assert "attn_type: 'dense' -> 'star'" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"
    write_jsonl(other, rows(2))
    assert cli(other, out, "--use_cache") == 2
    assert "input_path:" in capsys.readouterr().err
    assert out.read_text() == before


def test_a_row_of_a_changed_sample_is_run_again(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    samples = rows(3)
    write_jsonl(inp, samples)
    assert cli(inp, out) == 0
    samples[1]["input_query"] = " A different question?"
    write_jsonl(inp, samples)
    assert cli(inp, out, "--use_cache") == 0
    assert "1 stale" in capsys.readouterr().err
    got = {r["index"]: r for r in read_rows(out)}
    assert sorted(got) == [0, 1, 2] and got[1]["input_query"] == " A different question?"


def test_output_equal_to_input_is_refused_and_the_input_untouched(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, rows(2))
    before = inp.read_text()
    for flags in ([], ["--use_cache"]):
        assert cli(inp, inp, *flags) == 2
        assert "is the input file" in capsys.readouterr().err
    link = tmp_path / "same.jsonl"
    link.symlink_to(inp)
    assert cli(inp, link) == 2
    assert "is the input file" in capsys.readouterr().err
    assert inp.read_text() == before


@pytest.mark.parametrize("make,message", [
    (lambda t: t / "adir", "is a directory"),
    (lambda t: t / "in.jsonl" / "out.jsonl", "which is a file"),
    (lambda t: Path("/proc/self/no_such_dir/out.jsonl"), "cannot write in"),
])
def test_bad_output_location_is_refused_before_any_model_starts(tmp_path, capsys, monkeypatch, make, message):
    import star_runtime.harness.predict as predict

    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, rows(1))
    (tmp_path / "adir").mkdir()

    def no_engine(*a, **k):
        raise AssertionError("the engine must not start for a bad output path")

    monkeypatch.setattr(predict, "Engine", no_engine)
    assert cli(inp, make(tmp_path)) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: --output_path") and message in line, line


def test_second_writer_is_refused_in_one_line(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows(2))
    holder = ResultFile(out, {"x": 1}, rows(2), inp)
    try:
        assert cli(inp, out) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"another run (pid {os.getpid()}) is writing" in line, line
    finally:
        holder.close()
    assert cli(inp, out) == 0  # the lock is gone with its holder


def test_two_concurrent_runs_never_interleave(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows(8))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd(inp, out, tokens=300), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out.exists() and out.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.05)
    # the second run is this process (the lock is the file system's, between any two processes); it is refused
    # before any model starts, so it returns while the first, 7 samples from its end, is still writing
    second = cli(inp, out, "--use_cache", tokens=300)
    assert first.poll() is None, "the first run should still be writing"
    err = capsys.readouterr().err
    assert second == 2 and "is writing" in err.strip().splitlines()[-1], err[-500:]
    assert first.wait(timeout=300) == 0
    got = read_rows(out)
    assert [r["index"] for r in got] == list(range(8))


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writing past the limit is then an EFBIG error
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_ends_in_one_line_and_keeps_every_finished_row(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows(6, words=60))
    assert cli(inp, tmp_path / "probe.jsonl", "--num_samples", "1") == 0  # the size of one row
    row_bytes = len((tmp_path / "probe.jsonl").read_bytes())
    # the file system takes 2.5 rows, as a disk that fills up mid-run
    res = subprocess.run(cmd(inp, out), capture_output=True, text=True,
                         preexec_fn=_limit_file_size(int(2.5 * row_bytes)))
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot write") and "the 2 finished rows before this one are kept" in line, line
    assert [r["index"] for r in read_rows(out)] == [0, 1]  # whole rows only, no torn line
    assert cli(inp, out, "--use_cache") == 0  # the resume, here without the limit
    assert [r["index"] for r in read_rows(out)] == list(range(6))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_mid_run_keeps_finished_rows_and_resume_completes(tmp_path, sig):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows(6))
    proc = subprocess.Popen(cmd(inp, out, "--use_cache", tokens=300), env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and out.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    err = proc.stderr.read()
    if sig == signal.SIGTERM:
        assert rc == 128 + signal.SIGTERM and "stopped by SIGTERM" in err.strip().splitlines()[-1], err[-500:]
    first = out.read_text()
    assert 2 <= first.count("\n") < 6 and first.endswith("\n")
    assert cli(inp, out, "--use_cache", tokens=300) == 0  # the resume, in this process
    assert sorted(r["index"] for r in read_rows(out)) == list(range(6))
    assert out.read_text().startswith(first)


def test_result_file_unit_refuses_mixed_settings(tmp_path):
    out = tmp_path / "o.jsonl"
    samples = rows(2)
    f = ResultFile(out, {"a": 1}, samples)
    f.write({"index": 0, "pred": "x"})
    f.close()
    with pytest.raises(ConfigError, match="a: 1 -> 2"):
        ResultFile(out, {"a": 2}, samples, resume=True)
    again = ResultFile(out, {"a": 1}, samples, resume=True)
    assert set(again.done) == {0}
    again.close()


def test_a_symlinked_output_is_the_same_file_for_the_lock_and_the_rows(tmp_path, capsys):
    inp, real = tmp_path / "in.jsonl", tmp_path / "real.jsonl"
    write_jsonl(inp, rows(2))
    assert cli(inp, real) == 0
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    import fcntl

    holder = open(str(real) + ".lock", "a")  # another writer of real.jsonl holds its lock
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert cli(inp, link) == 2  # the same file through the link: refused, nothing truncated
        assert "is writing" in capsys.readouterr().err
    finally:
        holder.close()
    assert len(read_rows(real)) == 2
    assert cli(inp, link, "--use_cache") == 0
    assert link.is_symlink() and len(read_rows(real)) == 2


def test_ignore_eos_is_a_setting_that_changes_answers(tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows(2))
    assert cli(inp, out) == 0
    assert cli(inp, out, "--use_cache", "--ignore_eos") == 2
    assert "ignore_eos: False -> True" in capsys.readouterr().err
