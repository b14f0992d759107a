"""Decode step latency against its physical floor, on one GPU (no phase 1: the context KV is random).

For each case BATCH:CONTEXT, A samples each hold CONTEXT tokens of KV; the runtime decodes --steps tokens with
CUDA-graph steps (the default path); the stock transformers step (SDPA, DynamicCache holding the same KV)
runs in the same process as the baseline column. The floor, measured in the same run (bench/floors.py): every
linear layer for A tokens replayed from a CUDA graph (the weight read) plus the batch's KV bytes read once at
the copy bandwidth measured here. Prints a table and writes JSON lines to --out.

  python bench/bench_decode.py --cases 1:32768 1:131072 16:4096 --out decode.jsonl
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

from floors import copy_bandwidth, kv_bytes_per_token, linear_floor_ms, weight_bytes  # noqa: E402
from star_runtime.config import add_flags, from_args  # noqa: E402
from star_runtime.decode import generate  # noqa: E402
from star_runtime.kv.shard import ContextShard  # noqa: E402
from star_runtime.models.loader import head_dim, resolve_model, text_config  # noqa: E402
from star_runtime.parallel.worker import Worker  # noqa: E402
from star_runtime.sampling import Sampler  # noqa: E402


def random_shards(model, batch: int, length: int, g):
    cfg, hd = text_config(model.config), head_dim(model.config)
    dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
    shards = []
    for _ in range(batch):
        sh = ContextShard(cfg.num_hidden_layers)
        for layer in range(cfg.num_hidden_layers):
            k = torch.randn(1, cfg.num_key_value_heads, length, hd, device=dev, dtype=dt, generator=g)
            v = torch.randn(1, cfg.num_key_value_heads, length, hd, device=dev, dtype=dt, generator=g)
            sh.set(layer, k, v)
        shards.append(sh)
    return shards


def runtime_step_ms(worker, shards, length, steps, decode, layers, g, profile=False):
    dev = worker.device
    vocab = worker.model.config.vocab_size
    queries = [torch.randint(100, vocab, (8,), device=dev, generator=g) for _ in shards]
    n = len(shards)
    args = (worker.model, worker.group, shards, queries, [length] * n, [steps] * n,
            [Sampler() for _ in shards], [None] * n, set())
    generate(*args, decode=decode, layers=layers)  # warm-up: compile, capture
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            generate(*args, decode="static", layers=layers)
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=20), flush=True)
        print(p.key_averages().table(sort_by="self_cuda_time_total", row_limit=40), flush=True)
    gens = generate(*args, decode=decode, layers=layers)
    return 1000 * gens[0].decode_s / max(1, gens[0].steps - 1)


@torch.inference_mode()
def hf_step_ms(model, shards, length, steps):
    """The stock model's decode step (SDPA, DynamicCache) over the same KV."""
    from transformers import DynamicCache

    from star_runtime.models.fuse import stock_projections

    model.set_attn_implementation("sdpa")
    try:
        cache = DynamicCache()
        for layer in range(len(shards[0].keys)):
            k = torch.cat([sh.get(layer)[0] for sh in shards])
            v = torch.cat([sh.get(layer)[1] for sh in shards])
            cache.update(k, v, layer)
        dev = next(model.parameters()).device
        tok = torch.full((len(shards), 1), 1000, dtype=torch.long, device=dev)
        times = []
        for i in range(steps):
            pos = torch.full((len(shards), 1), length + i, device=dev)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with stock_projections(model):  # the stock layers' separate q/k/v, gate/up matmuls
                out = model(tok, past_key_values=cache, use_cache=True, position_ids=pos)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    finally:
        model.set_attn_implementation("star_runtime")
    return 1000 * statistics.median(times[2:])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="+", default=["1:32768", "1:131072", "16:4096"], help="BATCH:CONTEXT")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--layers", nargs="+", default=["auto"], help="--prefill_layers values to time the steps with")
    p.add_argument("--no_hf", action="store_true")
    p.add_argument("--profile", default=None, help="BATCH:CONTEXT to profile one static-decode run")
    p.add_argument("--out", default=None)
    add_flags(p, exclude=("attn_type", "num_workers", "ignore_eos", "tokens_to_generate"),
              defaults={"model_path": "random:llama3-8b", "device": "cuda", "dtype": "bfloat16"},
              extra_flags={"model_path": ("--model",)})
    a = p.parse_args()
    cfg = from_args(a, attn_type="dense", ignore_eos=True).validate()
    worker = Worker(cfg, resolve_model(cfg.model_path), 0, 1)
    model, dev = worker.model, worker.device
    card = torch.cuda.get_device_name(dev)
    bw = copy_bandwidth(dev)
    per_token = kv_bytes_per_token(model)
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for case in a.cases:
        batch, length = (int(x) for x in case.split(":"))
        shards = random_shards(model, batch, length, g)
        weights_ms = linear_floor_ms(model, batch)
        kv_ms = 1000 * batch * (length + a.steps) * per_token / bw
        row = {"card": card, "model": cfg.model_path, "blas": cfg.blas, "batch": batch, "context": length,
               "floor_ms": weights_ms + kv_ms, "floor_weights_ms": weights_ms, "floor_kv_ms": kv_ms,
               "floor_bytes_ms": 1000 * weight_bytes(model) / bw + kv_ms,
               "copy_gb_s": bw / 1e9, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
        for layers in a.layers:
            ms = runtime_step_ms(worker, shards, length, a.steps, cfg.decode if cfg.decode != "auto" else "graph",
                                 layers, g, profile=a.profile == case and layers == a.layers[0])
            row[f"step_ms_{layers}"] = ms
        if not a.no_hf:
            row["hf_step_ms"] = hf_step_ms(model, shards, length, 12)
        best = min(row[f"step_ms_{x}"] for x in a.layers)
        row["step_ms"], row["vs_floor"], row["tokens_per_s"] = best, best / row["floor_ms"], 1000 * batch / best
        rows.append(row)
        print(json.dumps(row), flush=True)
        del shards
        torch.cuda.empty_cache()
    print("\n| card | batch | context | step (ms) | floor (ms) = weights + KV | step / floor | tokens/s | stock "
          "transformers step (ms) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['card']} | {r['batch']} | {r['context']} | {r['step_ms']:.2f} | {r['floor_ms']:.2f} = "
              f"{r['floor_weights_ms']:.2f} + {r['floor_kv_ms']:.2f} | {r['vs_floor']:.2f}x | {r['tokens_per_s']:.0f} | "
              f"{r.get('hf_step_ms', float('nan')):.2f} |")
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    worker.close()


if __name__ == "__main__":
    main()
