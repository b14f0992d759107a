"""The model's linear layers at a request's token counts, by the matmul backends torch has, against the weight
bytes read at the copy bandwidth measured in the same run.

Every decoder layer's projections (q, k, v, o, gate, up, down of Llama-3.1-8B's shape, random bf16 weights, one
set per layer so nothing stays in L2) and the LM head for one token, replayed from one CUDA graph, as the
runtime's steps run them. Backends: ``cublas`` (torch's default), ``cublaslt`` (torch's preferred-BLAS switch),
``autotune`` (torch.compile max-autotune: Inductor times cuBLAS against its Triton matmul templates per shape and
keeps the fastest), ``skinny`` (the runtime's Triton kernel for a few rows, star_runtime/models/skinny.py, with
its tuned tiles), ``tunable`` (torch.cuda.tunable: every cuBLAS / cuBLASLt algorithm it lists timed per shape,
the fastest kept), and the ``fused`` twins of each, where q/k/v and gate/up are one matmul over concatenated
weights (what a model with fused projections, e.g. Phi-3, runs). Prints a table per token count and per shape,
and writes JSON lines (--out).

    python bench/micro_linear.py --tokens 1 64 --out docs/results/linear_backends_h200.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from floors import copy_bandwidth, graph_ms  # noqa: E402

from star_runtime.models import skinny  # noqa: E402
from star_runtime.models.random_configs import random_config  # noqa: E402


def shapes(cfg, fused: bool) -> list[tuple[str, int, int]]:
    """(name, out_features, in_features) of one decoder layer's projections."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    hd = h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    if fused:
        return [("qkv", q + 2 * kv, h), ("o", h, q), ("gate_up", 2 * i, h), ("down", h, i)]
    return [("q", q, h), ("k", kv, h), ("v", kv, h), ("o", h, q), ("gate", i, h), ("up", i, h), ("down", h, i)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama3-8b", help="a random_configs name")
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 64])
    p.add_argument("--backends", nargs="+", default=["cublas", "cublaslt", "autotune"])
    p.add_argument("--layers", type=int, default=0, help="decoder layers (default: the model's)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    cfg = random_config(a.model)
    layers = a.layers or cfg.num_hidden_layers
    dev, dt = torch.device("cuda"), torch.bfloat16
    bw = copy_bandwidth(dev)
    card = torch.cuda.get_device_name(0)
    weights = {}
    for fused in (False, True):
        for name, n, k in shapes(cfg, fused):
            if name not in weights:
                weights[name] = [torch.randn(n, k, device=dev, dtype=dt) * 0.02 for _ in range(layers)]
    head = torch.randn(cfg.vocab_size, cfg.hidden_size, device=dev, dtype=dt) * 0.02
    rows = []
    for backend in a.backends:
        lt = backend in ("cublaslt", "tunable", "skinny")  # skinny: cuBLASLt where the kernel is not taken
        torch.backends.cuda.preferred_blas_library("cublaslt" if lt else "cublas")
        torch.cuda.tunable.enable(backend == "tunable")  # TunableOp: cuBLAS / cuBLASLt algorithms timed per shape
        torch.cuda.tunable.tuning_enable(backend == "tunable")
        lin = F.linear
        if backend == "skinny":  # the runtime's kernel for <= 64 rows (star_runtime/models/skinny.py)
            lin = skinny.linear
        if backend == "autotune":
            torch._dynamo.reset()
            for knob in ("cache_size_limit", "recompile_limit"):  # one compile per shape
                if hasattr(torch._dynamo.config, knob):
                    setattr(torch._dynamo.config, knob, 256)
            lin = torch.compile(lambda x, w: F.linear(x, w), mode="max-autotune-no-cudagraphs", dynamic=False)
        for t in a.tokens:
            for fused in (False, True):
                sh = shapes(cfg, fused)
                xs = {k: torch.randn(t, k, device=dev, dtype=dt) for _, _, k in sh}
                xh = torch.randn(1, cfg.hidden_size, device=dev, dtype=dt)
                t0 = time.perf_counter()
                for name, _, k in sh:  # compile / autotune outside the capture
                    lin(xs[k], weights[name][0])
                lin(xh, head)
                torch.cuda.synchronize()
                tune_s = time.perf_counter() - t0

                def every_layer():
                    for layer in range(layers):
                        for name, _, k in sh:
                            lin(xs[k], weights[name][layer])
                    lin(xh, head)

                ms = graph_ms(every_layer)
                nbytes = layers * sum(n * k for _, n, k in sh) * 2 + head.numel() * 2
                row = {"backend": backend + ("+fused" if fused else ""), "tokens": t, "layers": layers,
                       "model": a.model, "ms": ms, "weight_gb": nbytes / 1e9, "floor_ms": 1e3 * nbytes / bw,
                       "tb_per_s": nbytes / ms / 1e9, "copy_tb_per_s": bw / 1e12, "tune_s": tune_s,
                       "card": card, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "shapes": {}}
                row["vs_floor"] = row["ms"] / row["floor_ms"]
                for name, n, k in sh:  # each shape alone: every layer's weights of it
                    w = weights[name]
                    x = xs[k]
                    us = 1e3 * graph_ms(lambda: [lin(x, w[layer]) for layer in range(layers)]) / layers
                    row["shapes"][name] = {"us": us, "tb_per_s": n * k * 2 / us / 1e6,
                                           "floor_us": 1e6 * n * k * 2 / bw}
                rows.append(row)
                print(json.dumps(row), flush=True)
    torch.backends.cuda.preferred_blas_library("cublas")
    print(f"\ncard {card}, copy bandwidth {bw / 1e12:.2f} TB/s, {layers} layers + LM head (one token)")
    print(f"{'backend':>16} {'tokens':>6} {'ms':>7} {'floor ms':>9} {'/floor':>7} {'TB/s':>6}  per shape us (floor)")
    for r in rows:
        per = "  ".join(f"{k} {v['us']:.1f} ({v['floor_us']:.1f})" for k, v in r["shapes"].items())
        print(f"{r['backend']:>16} {r['tokens']:>6} {r['ms']:>7.3f} {r['floor_ms']:>9.3f} {r['vs_floor']:>6.2f}x "
              f"{r['tb_per_s']:>6.2f}  {per}")
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
