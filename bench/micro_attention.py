"""Micro-benchmark of the partial-attention kernels for decode / query rows over a long KV (GPU)."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from star_runtime.attention.partial import _efficient, _flash, _math, partial_attention  # noqa: E402


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
