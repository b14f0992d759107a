"""Profile the server's eager batch decode step: block-mode sequences of cached passages decoding together on
one worker, as `star-runtime serve` runs them when requests overlap (parallel/worker.py serve_step).

    python bench/profile_serve_step.py --model random:llama3-8b --device cuda --passages 16 32 48 64

Prints the step times, then the profiler's tables (GPU time first) for one step.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_block_ttft import block_request  # noqa: E402
from star_runtime.config import RunConfig  # noqa: E402
from star_runtime.models.loader import resolve_model  # noqa: E402
from star_runtime.parallel.worker import Request, Worker  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:llama3-8b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPUs, float32 on the CPU")
    p.add_argument("--passages", nargs="+", type=int, default=[16, 32, 48, 64], help="per sequence")
    p.add_argument("--passage", type=int, default=512, help="tokens per passage")
    p.add_argument("--steps", type=int, default=3, help="timed steps before the profiled one")
    a = p.parse_args()
    dtype = a.dtype or ("bfloat16" if a.device == "cuda" else "float32")
    cfg = RunConfig(model_path=a.model, device=a.device, dtype=dtype, attn_type="block", block_cache_gpu_gib=40,
                    block_cache_cpu_gib=0, ignore_eos=True, prefill_layers="eager").validate()
    worker = Worker(cfg, resolve_model(a.model), 0, 1)
    g = torch.Generator().manual_seed(0)

    def request(i: int, n: int) -> Request:
        passages = [torch.randint(100, 30000, (a.passage,), generator=g).tolist() for _ in range(n)]
        query = torch.randint(100, 30000, (50,), generator=g).tolist()
        return block_request(passages, query, range(n), "profile", index=i, max_new=64)

    ids = list(range(len(a.passages)))
    worker.serve_step([], [request(0, a.passages[0])], [])  # alone: over an arena
    worker.serve_step([], [request(i, n) for i, n in enumerate(a.passages) if i], [0])  # the others join
    for _ in range(a.steps):
        r = worker.serve_step([], [], ids)
        print(f"step {1000 * r['step_s']:.2f} ms ({r['step_path']}, {len(ids)} sequences)", flush=True)
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device == "cuda" else [])
    with profile(activities=acts) as prof:
        r = worker.serve_step([], [], ids)
    print(f"profiled step {1000 * r['step_s']:.2f} ms")
    if a.device == "cuda":
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
