"""Micro-benchmark of the partial-attention kernels for decode / query rows over a long KV (GPU)."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from star_runtime.attention.partial import _cudnn, _flash, _math, partial_attention  # noqa: E402


def timeit(fn, n=50):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n * 1000  # us


for tk in (16384, 32768):
    for tq in (1, 64):
        q = torch.randn(1, 32, tq, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, 8, tk, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        res = {
            "flash_expanded": lambda: _flash(q, k, v, 0.088, False),
            "runtime(fold)": lambda: partial_attention(q, k, v, 0.088),
            "math_fold": lambda: _math(q.reshape(1, 8, 4 * tq, 128), k, v, 0.088, False),
        }
        try:
            _flash(q, k, v[:, :], 0.088, False)
            res["flash_native_gqa"] = lambda: torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=0.088)
            torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=0.088)
        except Exception as ex:
            print("native gqa flash:", type(ex).__name__, str(ex)[:100])
            res.pop("flash_native_gqa", None)
        print(f"tk={tk} tq={tq}: " + "  ".join(f"{n} {timeit(f):.0f}us" for n, f in res.items()), flush=True)


# Prefill (phase-1) shapes: causal blocks, as star batches them; FLOP rate of flash vs cuDNN, and agreement.
for b, t in ((1, 16384), (4, 8192), (2, 16384)):
    q = torch.randn(b, 32, t, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, 8, t, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    flops = 4 * b * 32 * 128 * t * t / 2
    row = []
    for name, fn in (("flash", _flash), ("cudnn", _cudnn)):
        try:
            us = timeit(lambda: fn(q, k, v, 0.088, True), n=10)
            row.append(f"{name} {us / 1000:.2f} ms ({flops / us / 1e6:.0f} TFLOP/s)")
        except Exception as ex:  # noqa: BLE001
            row.append(f"{name} unavailable: {type(ex).__name__}: {str(ex)[:80]}")
    try:
        o1, l1 = _flash(q[:, :, :2048], k[:, :, :2048], v[:, :, :2048], 0.088, True)
        o2, l2 = _cudnn(q[:, :, :2048], k[:, :, :2048], v[:, :, :2048], 0.088, True)
        row.append(f"|dout| {(o1 - o2).abs().max().item():.1e} |dlse| {(l1 - l2).abs().max().item():.1e}")
    except Exception as ex:  # noqa: BLE001
        row.append(f"compare failed: {type(ex).__name__}")
    print(f"causal b={b} t={t}: " + "  ".join(row), flush=True)
