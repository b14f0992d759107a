"""Matmuls of a few tokens against a large weight -- a decode step, a cached-passage question -- at the weight
read's speed: one Triton kernel that streams the weight once, with the reduction dimension split across
programs so every SM of the card pulls its share.

For 64 tokens or fewer a linear layer is a read of its weight; cuBLAS's choices for the 8B shape leave narrow
outputs on too few SMs (o_proj, 4096 x 4096: 64 programs of 64 x 64 on 132 SMs, 1.5x its read time at 64
tokens, bench/micro_linear.py). Here program (n, s) computes outputs [n BN, (n + 1) BN) over the s-th of S
slices of the input features; with S > 1 each writes its fp32 partial and the last of a tile's S programs to
arrive (an arrival counter per tile) sums the S partials *in slice order* and writes the output: the result
does not depend on which program finished last (deterministic, run to run and replay to replay).

x (M, K) with unit stride on K, weight (N, K) contiguous (nn.Linear's), bias (N,) or None -> (M, N) in x's
dtype, fp32 accumulation. Used for M <= MAX_ROWS on CUDA half precision when a tile configuration divides the
shape and it was timed faster on this card (``config``, skinny_tuned.json); anything else is torch's matmul
(F.linear), the same math.

Not re-entrant across streams: calls of one shape share a workspace and counters, so they must run in one
stream order (the runtime's steps do).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import pdl

MAX_ROWS = 64  # tokens at most: above this a matmul is compute-bound and cuBLAS is the right kernel

# (BLOCK_N, BLOCK_K, splits, warps, stages) per card name and "bucket,N,K", timed by bench/tune_skinny.py
# (--write); shapes or cards not listed take torch's matmul (tune another card with that script).
TUNED_FILE = Path(__file__).with_name("skinny_tuned.json")
_TUNED: dict = {}


def tuned(card: str) -> dict[tuple[int, int, int], tuple[int, ...]]:
    """The tuned configurations of this card: (rows bucket, N, K) -> (BLOCK_N, BLOCK_K, splits, warps, stages),
    or None where torch's matmul measured faster."""
    if card not in _TUNED:
        table = json.loads(TUNED_FILE.read_text()) if TUNED_FILE.exists() else {}
        _TUNED[card] = {tuple(int(v) for v in key.split(",")): tuple(c) if c else None
                        for key, c in table.get(card, {}).items()}
    return _TUNED[card]


def rows_bucket(m: int) -> int:
    """The kernel's BLOCK_M for m rows: 16 (a decode step's batch) or 64."""
    return 16 if m <= 16 else 64


def config(m: int, n: int, k: int, device) -> tuple[int, int, int, int, int] | None:
    """The tile configuration of an (m, k) x (k, n) matmul on this card, or None (torch's matmul): only shapes
    timed faster than torch's on this card by bench/tune_skinny.py take the kernel."""
    if m > MAX_ROWS:
        return None
    return tuned(_card(torch.device(device))).get((rows_bucket(m), n, k))


_CARDS: dict = {}


def _card(device: torch.device) -> str:
    if device not in _CARDS:
        _CARDS[device] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return _CARDS[device]


_ON = {"on": True}


def enable(on: bool) -> None:
    """Process-wide, as torch's BLAS choice is (--blas: auto takes the kernel, a library named takes that alone)."""
    _ON["on"] = bool(on)


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Switched on, half precision and Triton there (``linear`` has already sent CPU tensors and autograd to
    torch's matmul)."""
    if not _ON["on"] or x.dtype not in (torch.float16, torch.bfloat16) or weight.dtype != x.dtype:
        return False
    from ..attention.split_kv import available

    return available(x[..., :16])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x (..., K): the skinny kernel where it serves, torch's matmul elsewhere.
    Inside torch.compile it is one opaque op (the choice is made on the real shapes when it runs)."""
    if x.device.type != "cuda" or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return F.linear(x, weight, bias)  # off CUDA, or training (the op has no gradient): torch's matmul
    if torch.compiler.is_compiling():
        return _linear_op(x, weight, bias)
    return _linear(x, weight, bias)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    k = x.shape[-1]
    m = x.numel() // k if k else 0
    if (m == 0 or m > MAX_ROWS or not weight.is_contiguous() or not usable(x, weight)
            or (bias is not None and (bias.dtype != x.dtype or not bias.is_contiguous()))):
        return F.linear(x, weight, bias)
    c = config(m, weight.shape[0], k, x.device)
    if c is None:
        return F.linear(x, weight, bias)
    x2 = x.reshape(m, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return run(x2, weight, bias, c).view(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("star_runtime::linear", mutates_args=())
def _linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _linear(x, weight, bias)


@_linear_op.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


_WORK: dict = {}


def run(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, c: tuple) -> torch.Tensor:
    """x (M, K) unit stride on K, weight (N, K) contiguous -> (M, N), with configuration c (BLOCK_N, BLOCK_K,
    splits, warps, stages); the shape must be divisible by the tiles (N % BLOCK_N, K % (splits BLOCK_K))."""
    if x.device.type == "cuda" and x.device.index != torch.cuda.current_device():  # Triton's launch device
        with torch.cuda.device(x.device):
            return run(x, weight, bias, c)
    m, k = x.shape
    n = weight.shape[0]
    bn, bk, s, warps, stages = c
    if n % bn or k % (s * bk):
        raise ValueError(f"tiles {bn} x {bk} with {s} splits do not divide ({n}, {k})")
    bm = rows_bucket(m)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    part, count = y, y  # unused when s == 1
    if s > 1:
        key = (x.device, s, bm, n, bn)
        if key not in _WORK:  # the counters start at 0; the last program of each tile puts its counter back
            if x.is_cuda and torch.cuda.is_current_stream_capturing():  # recorded, not run: counters unset
                raise RuntimeError("the skinny matmul's first call of this shape is inside a CUDA graph capture; "
                                   "run the step once before capturing it")
            _WORK[key] = (torch.empty((s, bm, n), dtype=torch.float32, device=x.device),
                          torch.zeros(n // bn, dtype=torch.int32, device=x.device))
        part, count = _WORK[key]
    # the slice length goes in as a number of its own: Triton then knows it (and each slice's start) is a
    # multiple of 16 and vectorizes the loads -- computed in the kernel as K // S it is not known to be
    extra = pdl.launch_args(x.device)  # starts while the kernel before it runs: its weight needs nothing of it
    if extra and weight.data_ptr() % 16 == 0:  # (the bulk prefetch needs 16-byte aligned rows)
        extra["PF"] = min(pdl.prefetch_bytes(), (k // s) * weight.element_size())
    _kernel()[(n // bn, s)](x, weight, bias if bias is not None else y, y, part, count, m, n, k // s, x.stride(0),
                            weight.stride(0), s, HAS_BIAS=bias is not None, SPLIT=s > 1, BM=bm, BN=bn, BK=bk,
                            num_warps=warps, num_stages=stages, **extra)
    return y


_KERNEL: dict = {}


def _kernel():
    if "k" in _KERNEL:
        return _KERNEL["k"]
    import triton
    import triton.language as tl

    @triton.jit
    def skinny_kernel(X, W, B, Y, PART, COUNT, M, N, KS, sxm, swn, S, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr = False,
                      PF: tl.constexpr = 0):
        pn = tl.program_id(0)
        ps = tl.program_id(1)
        rm = tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        m_ok = rm < M
        if PDL:  # launched while the kernel before it runs (star_runtime/pdl.py)
            if PF > 0:  # the first PF bytes of each of this program's weight rows into L2: nothing waits for it
                tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.b32 $0, 0;", "=r,l,r",
                                          [W + rn.to(tl.int64) * swn + ps * KS, tl.full((BN,), PF, tl.int32)],
                                          dtype=tl.int32, is_pure=False, pack=1)
            tl.extra.cuda.gdc_wait()  # the input X is the kernel before's output
            tl.extra.cuda.gdc_launch_dependents()
        xp = X + rm[:, None].to(tl.int64) * sxm + (ps * KS + rk)[None, :]  # this program's slice of KS input features
        wp = W + rn[:, None].to(tl.int64) * swn + (ps * KS + rk)[None, :]
        acc = tl.zeros((BM, BN), tl.float32)
        for k0 in range(0, KS, BK):
            x = tl.load(xp + k0, mask=m_ok[:, None], other=0.0)
            w = tl.load(wp + k0)
            acc = tl.dot(x, tl.trans(w), acc)
        out_at = rm[:, None] * N + rn[None, :]
        if SPLIT:
            # this slice's partial, then the tile's arrival counter; every thread's stores are issued before
            # the counter is raised (barrier; the release orders them) and the last arrival reads them back
            # from L2 (.cg) after its acquire
            tl.store(PART + ps * BM * N + out_at, acc, mask=m_ok[:, None])
            tl.debug_barrier()
            if tl.atomic_add(COUNT + pn, 1, sem="acq_rel", scope="gpu") == S - 1:
                tl.debug_barrier()
                total = tl.zeros((BM, BN), tl.float32)
                for j in range(0, S):  # slice order, whoever came last: the same sum every time
                    total += tl.load(PART + j * BM * N + out_at, mask=m_ok[:, None], other=0.0,
                                     cache_modifier=".cg")
                tl.atomic_xchg(COUNT + pn, 0)  # ready for the next launch
                if HAS_BIAS:
                    total += tl.load(B + rn).to(tl.float32)[None, :]
                tl.store(Y + out_at, total.to(Y.dtype.element_ty), mask=m_ok[:, None])
        else:  # (the same two steps: a jit helper would not resolve in Triton's interpreter, the CPU tests' path)
            if HAS_BIAS:
                acc += tl.load(B + rn).to(tl.float32)[None, :]
            tl.store(Y + out_at, acc.to(Y.dtype.element_ty), mask=m_ok[:, None])

    _KERNEL["k"] = skinny_kernel
    return skinny_kernel
