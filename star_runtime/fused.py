"""Elementwise helpers fused into one kernel on CUDA (torch.compile), plain PyTorch elsewhere.

Only memory-bound elementwise math goes through here (merges, RoPE rotation), so the fused and the plain
version compute the same thing; if compiling is impossible (no triton), the plain one runs with a notice.
STAR_RUNTIME_COMPILE=0 turns fusing off.
"""

from __future__ import annotations

import functools
import os
import sys

import torch


def fused(fn):
    """Decorator: ``fn`` compiled for CUDA tensors (first tensor argument decides), eager otherwise."""
    state = {"compiled": None, "broken": False}

    @functools.wraps(fn)
    def wrapper(*args):
        first = args[0]
        if (first.device.type != "cuda" or state["broken"]
                or os.environ.get("STAR_RUNTIME_COMPILE", "1") == "0"):
            return fn(*args)
        if state["compiled"] is None:
            state["compiled"] = torch.compile(fn, dynamic=True)
        try:
            return state["compiled"](*args)
        except Exception as e:  # e.g. no triton on this machine: same math, unfused
            state["broken"] = True
            print(f"[star-runtime] fused {fn.__name__} unavailable ({type(e).__name__}); running it unfused",
                  file=sys.stderr)
            return fn(*args)

    return wrapper
