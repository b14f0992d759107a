"""Memory-bound work fused by torch.compile on CUDA, plain PyTorch elsewhere.

Elementwise helpers (merges, RoPE rotation) go through ``fused``; prefill passes run the stock decoder layers
compiled (``compiled_layers``): norms, RoPE, SiLU * up and residual adds fused around the same matmuls, the
runtime attention left eager. The fused and the plain versions compute the same thing up to rounding; if
compiling is impossible (no triton), the plain one runs with a notice. STAR_RUNTIME_COMPILE=0 turns fusing off.
"""

from __future__ import annotations

import contextlib
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
        if first.device.type != "cuda" or state["broken"] or not compile_enabled():
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


def compile_enabled() -> bool:
    """STAR_RUNTIME_COMPILE=0 turns every torch.compile of the runtime off."""
    return os.environ.get("STAR_RUNTIME_COMPILE", "1") != "0"


_COMPILED = "_star_runtime_compiled_forward"
_NOTICE = {"given": False}


def _can_compile(device: torch.device) -> bool:
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            if not _NOTICE["given"]:
                _NOTICE["given"] = True
                print("[star-runtime] no triton: decoder layers run unfused (same math, slower prefill)",
                      file=sys.stderr)
            return False
    return True


def layers_compiled(mode: str, device: torch.device) -> bool:
    """Whether --prefill_layers ``mode`` compiles the decoder layers on ``device`` (auto: on CUDA only)."""
    return compile_enabled() and (mode == "compiled" or (mode == "auto" and device.type == "cuda"))


@contextlib.contextmanager
def compiled_layers(model, mode: str = "auto"):
    """Inside the block, each decoder layer of ``model`` runs a torch.compile'd forward. mode (--prefill_layers):
    auto = on CUDA only, compiled = on any device (the CPU needs a C++ compiler), eager = never.

    The stock layer's memory-bound work (RMSNorm in fp32, RoPE, SiLU * up, residual adds) becomes a few fused
    kernels around the same matmuls; the runtime attention is not traced (hooks.py marks it
    torch.compiler.disable), so every attention state is called as eagerly, with q, k, v equal up to the
    rounding of the fused elementwise math. Shapes are dynamic, so one compile serves every batch of blocks
    and every length. For prefill passes (many tokens per layer); decode runs the eager layers in a CUDA graph.
    Layers whose forward is already wrapped on the instance (a worker split over several GPUs: accelerate's
    device hooks) run eagerly.
    """
    layers = list(model.get_decoder().layers)
    dev = next(model.parameters()).device
    # a layer whose forward is already replaced on the instance (accelerate's device hooks on a split worker)
    hooked = any("forward" in layer.__dict__ for layer in layers)
    if not layers or hooked or not layers_compiled(mode, dev) or not _can_compile(dev):
        yield
        return
    for layer in layers:
        if _COMPILED not in layer.__dict__:
            layer.__dict__[_COMPILED] = torch.compile(layer.forward, dynamic=True)
        layer.__dict__["forward"] = layer.__dict__[_COMPILED]
    try:
        yield
    finally:
        for layer in layers:
            del layer.__dict__["forward"]
