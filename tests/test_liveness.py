"""A stalled worker ends the run in seconds with its rank named: a frozen process (SIGSTOP) or a step that
stops progressing, under Ray and under torchrun; long legitimate steps and idle workers are no alarm."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import make_engine, random_ids, run_ids
from star_runtime import progress
from star_runtime.errors import WorkerFailure
from star_runtime.parallel.liveness import Watchdog

ROOT = Path(__file__).resolve().parents[1]


def test_watchdog_judges_beats_and_progress():
    dog = Watchdog([0, 1], timeout_s=10)
    dog.observe(0, "1 5 0", now=0)
    dog.observe(1, "1 5 1", now=0)
    for t in range(1, 30):  # worker 0 idle, worker 1 busy and progressing: fine for as long as it takes
        dog.observe(0, f"{t + 1} 5 0", now=t)
        dog.observe(1, f"{t + 1} {5 + t} 1", now=t)
        assert dog.verdict(now=t) is None
    # worker 1 keeps beating but its step stops progressing
    for t in range(30, 45):
        dog.observe(0, f"{t + 1} 5 0", now=t)
        dog.observe(1, f"{t + 1} 34 1", now=t)
    assert "worker 1 made no progress for 10 s" in dog.verdict(now=44)
    # worker 0 stops beating altogether
    dog = Watchdog([0, 1], timeout_s=10)
    dog.observe(0, "1 0 0", now=0)
    dog.observe(1, "1 0 0", now=0)
    for t in range(1, 12):
        dog.observe(1, f"{t + 1} 0 0", now=t)
    assert dog.verdict(now=9) is None
    assert "worker 0 sent no heartbeat for 10 s" in dog.verdict(now=11)


def test_compiling_counts_as_progress():
    from star_runtime.progress import _compile_end, _compile_start

    from star_runtime.parallel.liveness import Heartbeat

    class Store:
        def __init__(self):
            self.values = []

        def set(self, key, value):
            self.values.append(value)

    store = Store()
    with progress.busy():
        assert progress.snapshot()[1]  # busy: judged by progress
        _compile_start()
        assert progress.compiling()
        hb = Heartbeat(lambda: store, 0)  # a compile in progress ticks every beat: never a stall
        time.sleep(2.5)
        hb.stop()
        counts = [int(v.split()[1]) for v in store.values]
        assert len(counts) >= 2 and counts == sorted(counts) and counts[-1] > counts[0]
        _compile_end()
        assert not progress.compiling()
        with progress.waiting():
            assert progress.snapshot()[2]
    assert not progress.snapshot()[1]


def test_waiting_workers_are_no_stall_while_a_peer_progresses():
    dog = Watchdog([0, 1], timeout_s=5)
    for t in range(20):  # rank 1 waits in a collective for rank 0, which works (its count moves)
        dog.observe(0, f"{t + 1} {t} 1 0", now=t)
        dog.observe(1, f"{t + 1} 3 1 1", now=t)
        assert dog.verdict(now=t) is None
    dog.reset(now=100)  # a new wait after an idle gap: time counts from now
    dog.observe(0, "30 19 1 0", now=101)
    dog.observe(1, "30 3 1 1", now=101)
    assert dog.verdict(now=102) is None


def test_a_worker_waiting_for_a_stuck_peer_is_not_blamed():
    dog = Watchdog([0, 1], timeout_s=5)
    for t in range(12):
        dog.observe(0, f"{t + 1} 7 1 0", now=t)  # busy, no progress, computing
        dog.observe(1, f"{t + 1} 9 1 1", now=t)  # busy, no progress, in a collective
    assert "worker 0 made no progress" in dog.verdict(now=11)


def _pid(actor):
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def test_frozen_ray_worker_ends_the_run_naming_it(ray_session):
    with make_engine(attn_type="ring", num_workers=2, stall_timeout_s=4) as eng:
        victim = _pid(eng.launcher.actors[1])
        threading.Timer(1.5, os.kill, (victim, signal.SIGSTOP)).start()
        t0 = time.time()
        try:
            with pytest.raises(WorkerFailure, match="worker 1 sent no heartbeat for 4 s"):
                run_ids(eng, random_ids(200, 1), random_ids(4, 2), 100000)
        finally:
            try:
                os.kill(victim, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert time.time() - t0 < 20


def test_ray_worker_stuck_inside_a_step_ends_the_run(ray_session):
    import ray

    with make_engine(attn_type="ring", num_workers=2, stall_timeout_s=4) as eng:
        def hang(self):
            self.worker._run_batch = lambda *args: time.sleep(120)  # beats go on, progress stops

        ray.get(eng.launcher.actors[0].__ray_call__.remote(hang))
        t0 = time.time()
        with pytest.raises(WorkerFailure, match="worker 0 made no progress for 4 s inside a step"):
            run_ids(eng, random_ids(50, 1), random_ids(4, 2), 4)
    assert time.time() - t0 < 20


def test_frozen_torchrun_rank_ends_the_job(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(f'{{"input_context": "Context {i}. Words words.", "input_query": " Q?"}}\n'
                           for i in range(50)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(30500 + os.getpid() % 1000), str(ROOT / "run_star_attn_inference.py"), "--model_path", "random:tiny",
           "--attn_type", "ring", "-np", "2", "--launcher", "torchrun", "--input_path", str(inp), "--output_path",
           str(tmp_path / "out.jsonl"), "--tokens_to_generate", "300", "--stall_timeout_s", "4"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out.jsonl"
    deadline = time.time() + 120  # one row written: both ranks are well into the 50-sample run
    while time.time() < deadline and not (out.exists() and out.read_text().count("\n") >= 1):
        time.sleep(0.1)
    ranks = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                            text=True).stdout.split()]
    assert len(ranks) == 2
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    os.kill(ranks[0], signal.SIGSTOP)
    t0 = time.time()
    try:
        # the healthy rank names the frozen one within seconds and exits; torchrun's own teardown of a
        # stopped process (SIGTERM, then a grace period) is torchrun's, so the test ends it once the error is out
        while time.time() - t0 < 60 and not any("sent no heartbeat" in x for x in lines):
            time.sleep(0.1)
        found_s = time.time() - t0
    finally:
        for p in ranks:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    rc = proc.wait(timeout=120)
    reader.join(10)
    err = "".join(lines)
    assert rc != 0
    assert re.search(r"error: worker [01] sent no heartbeat for 4 s", err), err[-2000:]
    assert found_s < 30, found_s
    assert out.read_text().endswith("\n")  # the finished rows are whole
