"""Local attention that also returns its softmax log-sum-exp, the unit every mode is built from.

Two masks are ever needed: none (the query sees every key) and square causal (query i sees keys 0..i of
the same tokens). Every mode (dense, star, ring, phase 2) is written with just these two, so the kernels
never depend on how a library aligns a causal mask of unequal lengths.

Kernels (each returns the LSE itself): on CUDA with bf16/fp16 the fused flash kernel; on CUDA fp32 the fused
memory-efficient kernel; on the CPU torch's flash kernel for CPU. An fp32 math path chunked over queries is
the reference they are tested against; ``STAR_RUNTIME_ATTN_KERNEL=math|flash|cudnn|efficient|cpu_flash|split``
forces one. Short queries over token-major rows (decode_partial, prefill_partial) use the split-KV kernel
(attention/split_kv.py) on CUDA; ``flash`` takes the varlen flash kernel instead (benchmarks compare them).
"""

from __future__ import annotations

import os
import sys

import torch

from .split_kv import available as split_kv_available
from .split_kv import split_kv_attention

_MATH_CHUNK_BYTES = 256 * 1024 * 1024


def empty_partial(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial attention over no keys: out 0, lse -inf. q: (B, H, T, D)."""
    B, H, T, D = q.shape
    out = torch.zeros(B, H, T, D, dtype=torch.float32, device=q.device)
    lse = torch.full((B, H, T), float("-inf"), dtype=torch.float32, device=q.device)
    return out, lse


def partial_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool = False,
    native_out: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q over (k, v) with its log-sum-exp.

    q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D) with Hq a multiple of Hkv (GQA); causal needs Tq == Tk.
    Returns out (B, Hq, Tq, D) in fp32 (``native_out``: in the kernel's own dtype, for a caller whose fused
    merge reads it in fp32 anyway) and lse (B, Hq, Tq) in fp32 (natural log, scores times ``scale``).
    """
    out, lse = _partial(q, k, v, scale, causal)
    return (out if native_out else out.float()), lse


def _partial(q, k, v, scale, causal):
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal partial attention needs equal lengths, got Tq={q.shape[2]} Tk={k.shape[2]}")
    if k.shape[2] == 0 or q.shape[2] == 0:
        return empty_partial(q)
    kernel = (_KERNEL if _KERNEL != "split" else None) or _pick_kernel(q, causal)
    if kernel == "flash":
        return _flash(q, k, v, scale, causal)
    if kernel == "cpu_flash":
        return _cpu_flash(q, k, v, scale, causal)
    if kernel == "efficient":
        return _efficient(q, k, v, scale, causal)
    if kernel == "cudnn":
        if _KERNEL:
            return _cudnn(q, k, v, scale, causal)
        try:
            return _cudnn(q, k, v, scale, causal)
        except RuntimeError as e:  # no usable cuDNN attention here: the flash kernel computes the same
            _CUDNN_OK["ok"] = False
            print(f"[star-runtime] cuDNN attention unavailable ({str(e).splitlines()[0][:80]}); using flash",
                  file=sys.stderr)
            return _flash(q, k, v, scale, causal)
    if kernel == "math":
        return _math(q, k, v, scale, causal)
    raise ValueError(f"unknown STAR_RUNTIME_ATTN_KERNEL {kernel!r}; use math, flash, cudnn, efficient or cpu_flash")


_KERNEL = os.environ.get("STAR_RUNTIME_ATTN_KERNEL")


_CUDNN_OK = {"ok": True}


def _pick_kernel(q: torch.Tensor, causal: bool) -> str:
    """CUDA half precision: cuDNN for prefill-sized work (1.6x flash's FLOP rate on H100 in
    bench/micro_attention.py), flash for decode-sized queries (native GQA, split-KV)."""
    if q.device.type == "cuda" and q.shape[-1] <= 256 and q.shape[-1] % 8 == 0:
        if q.dtype not in (torch.float16, torch.bfloat16):
            return "efficient"
        return "cudnn" if _CUDNN_OK["ok"] and (causal or q.shape[2] >= 256) else "flash"
    if q.device.type == "cpu":
        return "cpu_flash"
    return "math"


def _expand_kv(q, k, v):
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return k, v


def _flash(q, k, v, scale, causal):
    # GQA natively (query head h reads KV head h // G): no K/V copies.
    res = torch.ops.aten._scaled_dot_product_flash_attention(
        q, k, v, 0.0, causal, False, scale=scale
    )
    return res[0], res[1].float()


def _efficient(q, k, v, scale, causal):
    hq, hkv = q.shape[1], k.shape[1]
    if not causal and hq != hkv:
        # Fold the G query heads sharing a KV head into G times the rows: exact without a mask, no K/V copy.
        b, _, tq, d = q.shape
        out, lse = _efficient(q.reshape(b, hkv, (hq // hkv) * tq, d), k, v, scale, False)
        return out.reshape(b, hq, tq, d), lse.reshape(b, hq, tq)
    k, v = _expand_kv(q, k, v)
    res = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, None, True, 0.0, causal, scale=scale
    )
    return res[0], res[1][..., : q.shape[2]].float()


def _cudnn(q, k, v, scale, causal):
    hq, hkv = q.shape[1], k.shape[1]
    if not causal and hq != hkv:  # fold GQA query heads into rows, as _efficient
        b, _, tq, d = q.shape
        out, lse = _cudnn(q.reshape(b, hkv, (hq // hkv) * tq, d), k, v, scale, False)
        return out.reshape(b, hq, tq, d), lse.reshape(b, hq, tq)
    k, v = _expand_kv(q, k, v)
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)
    return res[0], res[1].reshape(q.shape[0], q.shape[1], q.shape[2]).float()


def _cpu_flash(q, k, v, scale, causal):
    res = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    return res[0], res[1].float()


def _math(q, k, v, scale, causal):
    """fp32 reference math, chunked over queries, GQA without copying K/V per query head."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    qf = q.float().view(B, Hkv, Hq // Hkv, Tq, D)
    kf = k.float()
    vf = v.float()
    out = torch.empty(B, Hkv, Hq // Hkv, Tq, D, dtype=torch.float32, device=q.device)
    lse = torch.empty(B, Hkv, Hq // Hkv, Tq, dtype=torch.float32, device=q.device)
    chunk = max(1, _MATH_CHUNK_BYTES // max(1, B * Hq * Tk * 4))
    for s in range(0, Tq, chunk):
        e = min(Tq, s + chunk)
        valid = None
        if causal:
            valid = torch.arange(Tk, device=q.device).unsqueeze(0) <= torch.arange(s, e, device=q.device).unsqueeze(1)
        out[:, :, :, s:e], lse[:, :, :, s:e] = _grouped_softmax_attention(qf[:, :, :, s:e], kf, vf, scale, valid)
    return out.view(B, Hq, Tq, D), lse.view(B, Hq, Tq)


def _grouped_softmax_attention(qf, kf, vf, scale, valid):
    """fp32 qf (B, Hkv, G, Tq, D) over kf, vf (B, Hkv, Tk, D); valid None (all keys) or a bool mask that
    broadcasts to (B, Hkv, G, Tq, Tk). Returns out (B, Hkv, G, Tq, D), lse (B, Hkv, G, Tq); a row with no
    valid key gives out 0, lse -inf."""
    scores = torch.einsum("bhgqd,bhkd->bhgqk", qf, kf) * scale
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)  # empty row: exp(-inf) = 0, not NaN
    return torch.einsum("bhgqk,bhkd->bhgqd", torch.exp(scores - safe.unsqueeze(-1)), vf), lse


def masked_partial(q, k, v, scale: float, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the keys where ``valid`` is True: static shapes, for decode over a preallocated
    cache whose length lives on the device. fp32 math; q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D); valid (Tk,) or
    any shape that broadcasts to (B, Hkv, Hq / Hkv, Tq, Tk). A row with no valid key gives out 0, lse -inf."""
    B, Hq, Tq, D = q.shape
    Hkv = k.shape[1]
    out, lse = _grouped_softmax_attention(q.float().view(B, Hkv, Hq // Hkv, Tq, D), k.float(), v.float(), scale,
                                          valid)
    return out.reshape(B, Hq, Tq, D), lse.reshape(B, Hq, Tq)


_CU = {}  # (rows, capacity, device) -> the varlen kernel's cumulative offsets, made once (CUDA-graph safe)


def decode_partial(q, k_rows, v_rows, used, slots, scale: float, native_out: bool = False, base=None):
    """One new token per row over each row's first ``used[a]`` slots (static decode, lengths on the device).
    base: ``used - 1`` when the caller made it once for every layer of a step (one kernel less per layer).

    q: (A, Hq, 1, D); k_rows, v_rows: (A, C, Hkv, D); used: (A,) int32 on the device; slots: (C,) = arange(C).
    Returns out (A, Hq, 1, D) (fp32; with ``native_out`` the kernel's dtype) and lse (A, Hq, 1) fp32. CUDA half
    precision: the flash kernel in its varlen form (seqused_k), one launch for the batch, GQA native; elsewhere
    (CPU, fp32, STAR_RUNTIME_ATTN_KERNEL=math) the fp32 masked math it is tested against.
    """
    a, hq, _, d = q.shape
    c, hkv = k_rows.shape[1], k_rows.shape[2]
    # the split-KV kernel for every batch (16 x 4K: 78 us vs 86 for varlen flash; 1 x 32K with 32-key tiles:
    # 46 us vs 48.8, 128K: 138 vs 146; H200, bench/micro_attention.py); STAR_RUNTIME_ATTN_KERNEL=flash forces flash
    if _use_split(q):
        res = _split(q, k_rows, v_rows, used - 1 if base is None else base, scale, native_out)
        if res is not None:
            return res
    if (q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and _VARLEN_OK["ok"]
            and _KERNEL in (None, "flash", "cudnn", "split") and d <= 256 and d % 8 == 0):
        key = (a, c, q.device)
        if key not in _CU:
            _CU[key] = (torch.arange(a + 1, dtype=torch.int32, device=q.device),
                        torch.arange(a + 1, dtype=torch.int32, device=q.device) * c)
        cu_q, cu_k = _CU[key]
        try:
            res = torch.ops.aten._flash_attention_forward(
                q.reshape(a, hq, d), k_rows.view(a * c, hkv, d), v_rows.view(a * c, hkv, d), cu_q, cu_k, 1, c,
                0.0, False, False, scale=scale, seqused_k=used)
        except (RuntimeError, TypeError) as e:  # no varlen flash here: the masked math computes the same
            _VARLEN_OK["ok"] = False
            print(f"[star-runtime] varlen flash decode unavailable ({str(e).splitlines()[0][:80]}); using the "
                  "masked math kernel", file=sys.stderr)
        else:
            out, lse = res[0].view(a, hq, 1, d), res[1]
            lse = (lse.t() if lse.shape == (hq, a) else lse.reshape(a, hq)).reshape(a, hq, 1).float()
            return (out if native_out else out.float()), lse
    valid = (slots.unsqueeze(0) < used.unsqueeze(1))[:, None, None, None, :]  # (A, 1, 1, 1, C)
    return masked_partial(q, k_rows.transpose(1, 2), v_rows.transpose(1, 2), scale, valid)


_VARLEN_OK = {"ok": True}
_SPLIT_OK = {"ok": True}


def _use_split(q) -> bool:
    """Short queries over token-major rows on CUDA half precision: the split-KV Triton kernel (attention/
    split_kv.py), unless STAR_RUNTIME_ATTN_KERNEL names another kernel."""
    return (q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and _SPLIT_OK["ok"]
            and _KERNEL in (None, "split") and split_kv_available(q))


def _split(q, k_rows, v_rows, base, scale, native_out):
    """split_kv_attention, or None (with one notice, and off from then on) when Triton cannot build or launch
    it here: the varlen flash path then computes the same."""
    try:
        return split_kv_attention(q, k_rows, v_rows, base, scale, fp32_out=not native_out)
    except Exception as e:  # noqa: BLE001 -- a Triton build or launch problem
        _SPLIT_OK["ok"] = False
        print(f"[star-runtime] split-KV attention unavailable ({type(e).__name__}: {str(e).splitlines()[0][:80]}); "
              "using the varlen flash kernel", file=sys.stderr)
        return None


ROWS_SPLIT_TOKENS = 64  # query tokens up to which rows_partial reads token-major rows in place


def rows_partial(q, k_rows, v_rows, n_t, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q over every one of the n first slots of token-major rows, no mask (a decode step or a short query
    over a context shard that lives in rows, kv/shard.py).

    q: (1, Hq, T, D); k_rows, v_rows: (1, n, Hkv, D) (views of the rows, unit stride on D); n_t: (1,) int32 =
    [n] on the device. Returns out (1, Hq, T, D) fp32 and lse (1, Hq, T). CUDA half precision and T <= 64:
    the split-KV kernel reads the rows where they lie; elsewhere partial_attention reads them as head-major
    views (the same math).
    """
    if q.shape[2] <= ROWS_SPLIT_TOKENS and k_rows.shape[1] and _use_split(q):
        res = _split(q, k_rows, v_rows, n_t, scale, False)  # base n: every query row sees all n slots
        if res is not None:
            return res
    return partial_attention(q, k_rows.transpose(1, 2), v_rows.transpose(1, 2), scale)


def prefill_partial(q, k_rows, v_rows, used, cu_q, slots, scale: float, native_out: bool = False):
    """The T real tokens of one sample's query (padded to Tb) attend causally over the first ``used`` slots of
    its rows, which end with those T tokens (query token i sees slots < used - T + i + 1: the context and the
    query tokens up to itself).

    q: (1, Hq, Tb, D); k_rows, v_rows: (1, C, Hkv, D); used: (1,) int32; cu_q: (2,) int32 = [0, T] on the
    device; slots: (C,) = arange(C). Returns out (1, Hq, Tb, D), lse (1, Hq, Tb); rows past T are padding.
    CUDA half precision: one varlen flash launch (bottom-right causal, seqused_k); elsewhere fp32 masked math.
    """
    tb, d = q.shape[2], q.shape[3]
    if _use_split(q):
        res = _split(q, k_rows, v_rows, used - cu_q[1], scale, native_out)
        if res is not None:
            return res
    if (q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and _VARLEN_OK["ok"]
            and _KERNEL in (None, "flash", "cudnn", "split") and d <= 256 and d % 8 == 0):
        try:
            return _prefill_flash(q, k_rows, v_rows, used, cu_q, scale, native_out)
        except (RuntimeError, TypeError) as e:
            _VARLEN_OK["ok"] = False
            print(f"[star-runtime] varlen flash prefill unavailable ({str(e).splitlines()[0][:80]}); using the "
                  "masked math kernel", file=sys.stderr)
    limit = used.long() - cu_q[1].long() + torch.arange(tb, device=q.device) + 1  # (Tb,) slots each row sees
    valid = (slots.unsqueeze(0) < limit.unsqueeze(1))[None, None, None]  # (1, 1, 1, Tb, C)
    return masked_partial(q, k_rows.transpose(1, 2), v_rows.transpose(1, 2), scale, valid)


PREFILL_CHUNK = 4096  # context keys per piece of the query prefill's attention (pieces run side by side)


def _prefill_flash(q, k_rows, v_rows, used, cu_q, scale, native_out):
    """prefill_partial on the GPU in two varlen flash launches, both with their lengths on the device: the
    context [0, L) cut into pieces of PREFILL_CHUNK keys that run side by side (one query copy per piece, so
    the whole card works on one short query), and the query over its own T slots [L, L + T) causally; the
    pieces' partials are merged by their log-sum-exp (attention/merge.py)."""
    from .merge import merge_partials

    _, hq, tb, d = q.shape
    c, hkv = k_rows.shape[1], k_rows.shape[2]
    if hq % hkv:
        raise RuntimeError(f"{hq} query heads over {hkv} KV heads")
    k, v = k_rows.view(c, hkv, d), v_rows.view(c, hkv, d)
    n = -(-c // PREFILL_CHUNK)
    key = ("prefill", c, tb, q.device)
    if key not in _CU:
        dev = q.device
        _CU[key] = (torch.arange(n + 1, dtype=torch.int32, device=dev) * tb * (hq // hkv),
                    torch.arange(n + 1, dtype=torch.int32, device=dev) * PREFILL_CHUNK,
                    torch.arange(n, dtype=torch.int64, device=dev) * PREFILL_CHUNK,
                    torch.arange(tb, device=dev))
    cu_qs, cu_ks, starts, rows = _CU[key]
    t = cu_q[1:2].long()
    ctx = used.long() - t  # (1,) context length
    piece = (ctx - starts).clamp(0, PREFILL_CHUNK)  # (n,) keys of each piece
    qt = q[0].transpose(0, 1)  # (Tb, Hq, D)
    g = hq // hkv
    # the G query heads of a KV head become G times the rows (no mask: exact), so each piece's keys are read
    # once per KV head, not once per query head: row t * G + i is token t of query head j * G + i
    folded = qt.view(tb, hkv, g, d).transpose(1, 2).reshape(tb * g, hkv, d)
    res = torch.ops.aten._flash_attention_forward(
        folded.repeat(n, 1, 1), k, v, cu_qs, cu_ks, tb * g, PREFILL_CHUNK, 0.0, False, False, scale=scale,
        seqused_k=piece.to(torch.int32))
    empty = (piece == 0).view(n, 1, 1)
    oc = res[0].view(n, tb, g, hkv, d).transpose(2, 3).reshape(n, tb, hq, d)
    oc = torch.where(empty.unsqueeze(-1), 0, oc)  # an empty piece weighs nothing
    lc = res[1].reshape(hkv, n, tb, g).permute(1, 2, 0, 3).reshape(n, tb, hq).float().masked_fill(empty,
                                                                                               float("-inf"))
    own_k = torch.cat((ctx, ctx + tb)).to(torch.int32)  # the query's own slots start after the context
    res = torch.ops.aten._flash_attention_forward(
        qt, k, v, cu_q, own_k, tb, tb, 0.0, True, False, scale=scale, seqused_k=t.to(torch.int32))
    real = (rows < t).view(tb, 1)
    oo = torch.where(real.unsqueeze(-1), res[0], 0).unsqueeze(0)  # rows past T: padding, made harmless
    lo = res[1].reshape(hq, -1)[:, :tb].t().float().masked_fill(~real, float("-inf")).unsqueeze(0)
    outs = torch.cat((oc, oo)).permute(0, 2, 1, 3).unsqueeze(1)  # (n + 1, 1, Hq, Tb, D)
    lses = torch.cat((lc, lo)).permute(0, 2, 1).unsqueeze(1)  # (n + 1, 1, Hq, Tb)
    out, lse = merge_partials(outs.float(), lses)
    return (out.to(q.dtype) if native_out else out), lse


def reference_attention(q, k, v, scale, causal=False) -> torch.Tensor:
    """Plain softmax attention in fp64 for tests: q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D) -> (B, Hq, Tq, D)."""
    k, v = _expand_kv(q, k, v)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * scale
    if causal:
        Tq, Tk = q.shape[2], k.shape[2]
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", torch.softmax(scores, dim=-1), v.double())


__all__ = ["partial_attention", "empty_partial", "reference_attention"]
