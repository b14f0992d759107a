"""A server's decode step by batch size: block-mode sequences of cached passages decoding together on one
worker, as `star-runtime serve` runs them (parallel/worker.py serve_step), with the path each step took
(table: one replay of the batch-size bucket's CUDA graph over the sequences' arenas; batch: the eager step).

    python bench/profile_serve_step.py --model random:llama3-8b --device cuda --passages 16 64 32 48 16 64 32 48 \
        --batches 1 2 4 8 [--profile] [--out serve_step.jsonl]

Sequence i holds passages[i] cached passages of --passage tokens (8K-32K tokens for the defaults) and a
50-token question; the first b of them decode together for batch size b. Prints the median step times (the
floor beside them: the model's linear layers for b tokens plus the batch's KV bytes at the copy bandwidth,
bench/floors.py), then, with --profile, the profiler's table for one step of the largest batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_block_ttft import block_request  # noqa: E402
from floors import copy_bandwidth, kv_bytes_per_token, linear_floor_ms  # noqa: E402
from star_runtime.config import RunConfig  # noqa: E402
from star_runtime.models.loader import resolve_model  # noqa: E402
from star_runtime.parallel.worker import Request, Worker  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:llama3-8b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPUs, float32 on the CPU")
    p.add_argument("--decode", default="auto", help="the server's --decode (auto: graph on GPUs)")
    p.add_argument("--passages", nargs="+", type=int, default=[16, 64, 32, 48, 16, 64, 32, 48], help="per sequence")
    p.add_argument("--passage", type=int, default=512, help="tokens per passage")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--steps", type=int, default=10, help="timed steps per batch size")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    dtype = a.dtype or ("bfloat16" if a.device == "cuda" else "float32")
    cfg = RunConfig(model_path=a.model, device=a.device, dtype=dtype, attn_type="block", block_cache_gpu_gib=40,
                    block_cache_cpu_gib=0, ignore_eos=True, prefill_layers="eager", decode=a.decode).validate()
    worker = Worker(cfg, resolve_model(a.model), 0, 1)
    cuda = a.device == "cuda"
    card = torch.cuda.get_device_name(0) if cuda else "cpu"
    bw = copy_bandwidth(worker.device) if cuda else float("nan")
    per_token = kv_bytes_per_token(worker.model)
    g = torch.Generator().manual_seed(0)
    biggest = max(a.batches)
    need = a.steps * (len(a.batches) + 1) + 8

    def request(i: int, n: int) -> Request:
        passages = [torch.randint(100, 30000, (a.passage,), generator=g).tolist() for _ in range(n)]
        query = torch.randint(100, 30000, (50,), generator=g).tolist()
        return block_request(passages, query, range(n), "profile", index=i, max_new=need)

    t0 = time.perf_counter()
    worker.serve_step([], [], [], warm=biggest)
    warm_s = time.perf_counter() - t0
    seqs = list(range(biggest))
    for i in seqs:
        worker.serve_step([], [request(i, a.passages[i % len(a.passages)])], [])
    rows = []
    for b in a.batches:
        ids = seqs[:b]
        worker.serve_step([], [], ids)  # a bucket's first step
        times, paths = [], set()
        for _ in range(a.steps):
            r = worker.serve_step([], [], ids)
            times.append(r["step_s"])
            paths.add(r["step_path"])
        tokens = sum(a.passage * a.passages[i % len(a.passages)] + 50 for i in ids)
        row = {"batch": b, "context_tokens": tokens, "step_ms": 1000 * statistics.median(times),
               "path": "/".join(sorted(paths)), "card": card, "model": a.model, "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d"), "warm_s": warm_s,
               "floor_weights_ms": linear_floor_ms(worker.model, b) if cuda else float("nan"),
               "floor_kv_ms": 1000 * tokens * per_token / bw}
        row["floor_ms"] = row["floor_weights_ms"] + row["floor_kv_ms"]
        row["step_vs_floor"] = row["step_ms"] / row["floor_ms"]
        row["tokens_per_s"] = 1000 * b / row["step_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\ncaptured the steps in {warm_s:.1f} s\n{'batch':>5} {'KV tokens':>10} {'path':>6} {'step ms':>8} "
          f"{'floor ms':>9} {'/floor':>7} {'tokens/s':>9}")
    for r in rows:
        print(f"{r['batch']:>5} {r['context_tokens']:>10} {r['path']:>6} {r['step_ms']:>8.2f} {r['floor_ms']:>9.2f} "
              f"{r['step_vs_floor']:>6.2f}x {r['tokens_per_s']:>9.0f}")
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            r = worker.serve_step([], [], seqs)
        print(f"profiled step {1000 * r['step_s']:.2f} ms ({r['step_path']})")
        if cuda:
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
