"""Phase-1 time, TTFT and decode latency of dense / ring / star on random-weight models (GPU).

Runs one worker per process: plain `python` for one worker, `torchrun --nproc_per_node H` for H workers
(the runtime's env:// path). Every mode listed runs in the same processes on the same model, so the
numbers are comparable ratios. Writes one JSON line per (mode, length) to --out and prints a table.

  python bench/bench_modes.py --modes dense --lengths 16384 32768 --out dense.jsonl
  torchrun --nproc_per_node 2 bench/bench_modes.py --modes ring star --lengths 16384 32768 --out multi.jsonl
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

from flop_model import Shape, apb_flops, predicted_speedup, ring_flops, star_flops  # noqa: E402
from star_runtime.config import add_flags, from_args  # noqa: E402
from star_runtime.fused import layers_compiled  # noqa: E402
from star_runtime.models.loader import resolve_model  # noqa: E402
from star_runtime.parallel.worker import Options, Request, Worker  # noqa: E402


def profile_phase1(worker, ctx, qry, rank, mode, opts):
    """torch profiler over one run; rank 0 prints the kernels that take the GPU time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if worker.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        worker.run_batch([Request(0, ctx, qry, 2, mode=mode)], opts)
    if rank == 0:
        key = "cuda_time_total" if worker.device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15), flush=True)


@torch.inference_mode()
def hf_row(worker, ctx, qry, decode_tokens, length, a, card):
    """The stock transformers model on the same weights: SDPA attention, DynamicCache, greedy decode."""
    from transformers import DynamicCache

    model, dev = worker.model, worker.device
    model.set_attn_implementation("sdpa")
    try:
        ids = torch.tensor([ctx + qry], device=dev)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        cache = DynamicCache()
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - t0
        steps = []
        for _ in range(decode_tokens - 1):
            t1 = time.perf_counter()
            out = model(tok, past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            steps.append(time.perf_counter() - t1)
    finally:
        model.set_attn_implementation("star_runtime")
    return {"mode": "hf", "decode": "hf", "workers": 1, "context": length, "query": len(qry), "block_size": None,
            "phase1_s": prefill, "phase1_s_all": [prefill], "ttft_s": prefill,
            "decode_ms": 1000 * statistics.median(steps), "peak_gib_rank0": None, "model": a.model,
            "dtype": a.dtype, "card": card, "torch": torch.__version__, "load_s": None}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--modes", nargs="+", default=["star"])
    p.add_argument("--lengths", nargs="+", type=int, default=[16384, 32768])
    p.add_argument("--query_tokens", type=int, default=64)
    p.add_argument("--decode_tokens", type=int, default=33)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cases", nargs="+", default=None,
                   help="LENGTH:BLOCK pairs (BLOCK -1 = length / workers); overrides --lengths/--block_size")
    p.add_argument("--profile", default=None, help="MODE:LENGTH to profile phase 1 once (rank 0 prints the table)")
    p.add_argument("--peak_tflops", type=float, default=989.0, help="the card's dense bf16 peak (H100/H200 SXM)")
    p.add_argument("--decodes", nargs="+", default=["graph"], help="decode paths to time: eager static graph")
    p.add_argument("--hf_baseline", action="store_true",
                   help="also time the stock transformers model (SDPA, DynamicCache) prefill + decode, 1 worker")
    p.add_argument("--out", default=None)
    add_flags(p, exclude=("attn_type", "tokens_to_generate", "num_workers", "ignore_eos"),
              defaults={"model_path": "random:llama3-8b", "device": "cuda", "dtype": "bfloat16"},
              extra_flags={"model_path": ("--model",)})
    a = p.parse_args()
    a.model = a.model_path

    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    # random weights: always generate the full count
    cfg = from_args(a, attn_type=a.modes[0], num_workers=world, tokens_to_generate=a.decode_tokens,
                    ignore_eos=True).validate()
    cases = [tuple(int(x) for x in c.split(":")) for c in a.cases] if a.cases else \
        [(n, a.block_size) for n in a.lengths]
    t0 = time.time()
    worker = Worker(cfg, resolve_model(a.model), rank, world, "env://" if world > 1 else None)
    load_s = time.time() - t0
    dev = worker.device
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    compiled = layers_compiled(a.prefill_layers, dev)
    g = torch.Generator().manual_seed(0)
    rows = []
    # warm-up: kernels, allocator, NCCL communicators, fused ops, compiled layers (star: one block and
    # several blocks per rank, the two shapes a compile specialises on)
    for mode in a.modes:
        for dec, block in [(d, b) for d in a.decodes
                           for b in ([-1, 2048 // (3 * world)] if mode in ("star", "apb") else [-1])]:
            worker.run_batch([Request(-1, torch.randint(100, 30000, (2048,), generator=g).tolist(),
                                      torch.randint(100, 30000, (a.query_tokens,), generator=g).tolist(), 4,
                                      mode=mode)], Options(block_size=block, decode=dec))
    shape = Shape.from_config(worker.model.config)
    for length, block in cases:
        ctx = torch.randint(100, 30000, (length,), generator=g).tolist()
        qry = torch.randint(100, 30000, (a.query_tokens,), generator=g).tolist()
        if a.hf_baseline and world == 1:
            rows.append(hf_row(worker, ctx, qry, a.decode_tokens, length, a, card))
            print(json.dumps(rows[-1]), flush=True)
        for mode, dec in [(m, d) for m in a.modes for d in a.decodes]:
            if mode == "dense" and world > 1:
                continue
            if mode not in ("star", "apb") and any(r["mode"] == mode and r["context"] == length and r["decode"] == dec
                                      for r in rows):
                continue  # dense/ring do not depend on the block size: one run per length
            opts = Options(block_size=block, decode=dec)
            if a.profile == f"{mode}:{length}" and dec == a.decodes[0]:
                profile_phase1(worker, ctx, qry, rank, mode, opts)
            reps = []
            for _ in range(a.repeats):
                torch.cuda.reset_peak_memory_stats(dev) if dev.type == "cuda" else None
                r = worker.run_batch([Request(0, ctx, qry, a.decode_tokens, mode=mode)], opts)[0]
                peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0
                reps.append((r, peak))
            best = min(reps, key=lambda x: x[0].phase1_s)
            r = best[0]
            eff_block = (block if block > 0 else -(-length // world)) if mode in ("star", "apb") else None
            if mode == "star":
                fl = star_flops(shape, length, world, eff_block)
            elif mode == "apb":
                passing = max(1, eff_block // 8) if cfg.passing_tokens < 0 else cfg.passing_tokens
                fl = apb_flops(shape, length, world, eff_block, passing, a.query_tokens,
                               query_before=cfg.query_before_blocks)
            elif mode == "ring":
                fl = ring_flops(shape, length, world)
            else:
                fl = ring_flops(shape, length, 1)
            tflops = sum(fl.values()) / r.phase1_s / 1e12
            row = {
                "mode": mode, "decode": dec, "workers": world if mode != "dense" else 1, "context": length,
                "query": a.query_tokens, "block_size": eff_block,
                "phase1_tflops_per_gpu": tflops, "phase1_peak_fraction": tflops / a.peak_tflops,
                "phase1_s": r.phase1_s, "phase1_s_all": [x[0].phase1_s for x in reps],
                "ttft_s": r.ttft_s,
                "decode_ms": 1000 * statistics.median([x[0].decode_s / max(1, x[0].steps - 1) for x in reps]),
                "peak_gib_rank0": best[1], "model": a.model, "dtype": a.dtype, "card": card,
                "torch": torch.__version__, "load_s": load_s, "compiled_layers": compiled,
            }
            rows.append(row)
            if rank == 0:
                print(json.dumps(row), flush=True)
    if rank == 0:
        # star vs ring, measured and as the FLOP model predicts, for every case both modes ran
        for r in rows:
            if r["mode"] == "star":
                ring = next((x for x in rows if x["mode"] == "ring" and x["context"] == r["context"]
                             and x["decode"] == r["decode"]), None)
                if ring:
                    r["star_vs_ring_measured"] = ring["phase1_s"] / r["phase1_s"]
                    r["star_vs_ring_predicted"] = predicted_speedup(shape, r["context"], world, r["block_size"])
        print(f"\n{'mode':<6} {'decode':<6} {'workers':>7} {'context':>8} {'phase1 s':>9} {'TTFT s':>8} "
              f"{'decode ms/tok':>13}")
        for r in rows:
            extra = ""
            if r.get("phase1_tflops_per_gpu"):
                extra += f"  {r['phase1_tflops_per_gpu']:.0f} TFLOP/s/GPU ({100 * r['phase1_peak_fraction']:.0f}% peak)"
            if "star_vs_ring_measured" in r:
                extra += (f"  star/ring {r['star_vs_ring_measured']:.2f}x (model {r['star_vs_ring_predicted']:.2f}x, "
                          f"{100 * r['star_vs_ring_measured'] / r['star_vs_ring_predicted']:.0f}%)")
            print(f"{r['mode']:<6} {r['decode']:<6} {r['workers']:>7} {r['context']:>8} {r['phase1_s']:>9.3f} "
                  f"{r['ttft_s']:>8.3f} {r['decode_ms']:>13.2f}  block {r['block_size']}{extra}")
        if a.out:
            with open(a.out, "a") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
    worker.close()


if __name__ == "__main__":
    main()
