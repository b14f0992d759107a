"""Short queries over long token-major KV: split-KV attention ("flash decoding") for decode steps and the
query prefill of a cached-passage prompt.

A few query tokens (decode: 1; a question: up to 64) over tens of thousands of keys leave a flash kernel's grid
of (query tiles x heads) mostly idle: 32 programs on a card of 132 SMs. Here the G query heads that share a KV
head are folded into rows (each key is read once per KV head, not once per query head), the keys are cut into
S splits that run side by side (S chosen so the grid fills the card), and a second small kernel merges the
splits' partials by their log-sum-exp -- the exact merge of attention/merge.py, in fp32.

Shapes: q (A, Hq, Tb, D); k_rows, v_rows (A, C, Hkv, D) token-major (any strides with a unit last one);
base (A,) int32 or int64 on the device: query token t of row a sees slots < min(C, base[a] + t + 1) (decode:
base = used - 1; a query prefill of T real tokens after an L-token context: base = L). Returns out
(A, Hq, Tb, D) in q's dtype (fp32 with ``fp32_out``) and lse (A, Hq, Tb) fp32 (natural log; -inf and out 0 for
a row that sees no key). Lengths stay on the device, so the launches are CUDA-graph safe.
"""

from __future__ import annotations

import torch

from .. import pdl

_STATE: dict = {"triton": None}


def available(q: torch.Tensor) -> bool:
    """CUDA (or Triton's interpreter on the CPU), half precision or fp32, head dims a power of two >= 16."""
    if _STATE["triton"] is None:
        try:
            import triton  # noqa: F401

            _STATE["triton"] = True
        except ImportError:
            _STATE["triton"] = False
    d = q.shape[-1]
    return bool(_STATE["triton"]) and d >= 16 and d & (d - 1) == 0 and d <= 256


def splits_for(programs: int, keys: int, sms: int) -> int:
    """Splits so that programs x splits fills the card about twice, each split >= 256 keys; a power of two."""
    want = max(1, -(-2 * sms // max(1, programs)))
    most = max(1, keys // 256)
    s = 1
    while s < want and s * 2 <= most:
        s *= 2
    return min(s, 128)


def tiles(rows: int, d: int) -> tuple[int, int]:
    """(BLOCK_M folded query rows, BLOCK_N keys) of the split kernel. Decode-sized rows (<= 16) take 32-key
    tiles: over 32K keys, one row, H200, 41-46 us a layer against 50 with 64-key tiles and 48.8 for varlen flash;
    the 50-token query (256 rows) keeps 64 x 64 tiles (125 us; 128-row tiles or 8 warps 131-237 us)."""
    if rows <= 16:
        return 16, 32 if d > 64 else 64
    return (32 if rows <= 32 else 64), (64 if d > 64 else 128)


_KERNELS: dict = {}


def _kernels():
    if _KERNELS:
        return _KERNELS
    import triton
    import triton.language as tl

    @triton.jit
    def split_kernel(Q, K, V, BASE, O, L, TAB, layer, n_tab,
                     sq_a, sq_h, sq_t, sk_a, sk_c, sk_h, sv_a, sv_c, sv_h,
                     so_s, so_a, so_h, so_t, sl_s, sl_a, sl_h,
                     C, TB, scale_log2,
                     HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, S: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr):
        # the row tiles of one (split, KV head) are neighbours in launch order: they read the same keys
        # together, from L2 after the first
        mt = tl.program_id(0)
        s = tl.program_id(1)
        ah = tl.program_id(2)
        a = (ah // HKV).to(tl.int64)  # 64-bit offsets: a batch of long rows passes 2^31 elements
        h = ah % HKV
        rows = mt * BLOCK_M + tl.arange(0, BLOCK_M)  # folded row r = token t * G + head-in-group g
        t = rows // G
        g = rows % G
        row_ok = t < TB
        d = tl.arange(0, D)
        qh = h * G + g
        q = tl.load(Q + a * sq_a + qh[:, None] * sq_h + t[:, None] * sq_t + d[None, :], mask=row_ok[:, None],
                    other=0.0)
        if PAGED:  # row a's keys and values: the buffers whose addresses the table holds for this layer
            # element offsets from K (= V), multiples of 8 (16-byte aligned buffers): vectorized loads
            kp = K + tl.multiple_of(tl.load(TAB + (layer * 2) * n_tab + a), 8)
            vp = V + tl.multiple_of(tl.load(TAB + (layer * 2 + 1) * n_tab + a), 8)
        else:
            kp = K + a * sk_a
            vp = V + a * sv_a
        base = tl.load(BASE + a)
        lim = tl.minimum(base + t + 1, C)  # (M,) slots each row sees
        t_last = tl.minimum((mt * BLOCK_M + BLOCK_M - 1) // G, TB - 1)
        hi = tl.maximum(tl.minimum(base + t_last + 1, C), 0)  # the tile's keys: [0, hi)
        chunk = tl.cdiv(tl.cdiv(hi, S), BLOCK_N) * BLOCK_N
        lo = s * chunk
        end = tl.minimum(lo + chunk, hi)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, D), tl.float32)
        for start in range(lo, end, BLOCK_N):
            n = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
            kmask = n < end
            k = tl.load(kp + n[:, None] * sk_c + h * sk_h + d[None, :], mask=kmask[:, None], other=0.0)
            qk = tl.dot(q, tl.trans(k)) * scale_log2  # (M, N), log2 units
            valid = (n[None, :] < lim[:, None]) & kmask[None, :]
            qk = tl.where(valid, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(qk - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(vp + n[:, None] * sv_c + h * sv_h + d[None, :], mask=kmask[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        seen = l_i > 0
        out = acc / tl.where(seen, l_i, 1.0)[:, None]
        lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
        tl.store(O + s * so_s + a * so_a + qh[:, None] * so_h + t[:, None] * so_t + d[None, :], out,
                 mask=row_ok[:, None])
        tl.store(L + s * sl_s + a * sl_a + qh * sl_h + t, lse, mask=row_ok)

    @triton.jit
    def merge_kernel(O, L, OUT, LSE, so_s, sl_s, S, TB, sout_h, sout_t, D: tl.constexpr, BLOCK_S: tl.constexpr,
                     PDL: tl.constexpr = False):
        """Row r of the flattened (A, Hq, Tb): lse = logsumexp_s L[s, r], out = sum_s exp(L[s, r] - lse) O[s, r],
        stored at (r // Tb) * sout_h + (r % Tb) * sout_t (head-major: Tb * D, D; token-major: D, rows * D)."""
        if PDL:  # launched while the split kernel runs (star_runtime/pdl.py): its partials first
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        r = tl.program_id(0)
        sp = tl.arange(0, BLOCK_S)
        d = tl.arange(0, D)
        ok = sp < S
        ls = tl.load(L + sp * sl_s + r, mask=ok, other=float("-inf"))  # (S,)
        m = tl.max(ls, 0)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        w = tl.exp(ls - m_safe)
        tot = tl.sum(w, 0)
        o = tl.load(O + sp[:, None] * so_s + r * D + d[None, :], mask=ok[:, None], other=0.0)  # (S, D)
        acc = tl.sum(w[:, None] * o, 0)
        seen = tot > 0
        out = acc / tl.where(seen, tot, 1.0)
        lse = tl.where(seen, m_safe + tl.log(tl.where(seen, tot, 1.0)), float("-inf"))
        tl.store(OUT + (r // TB) * sout_h + (r % TB) * sout_t + d, out.to(OUT.dtype.element_ty))
        tl.store(LSE + r, lse)

    _KERNELS.update(split=split_kernel, merge=merge_kernel)
    return _KERNELS


_SMS: dict = {}
_SCRATCH: dict = {}  # (splits, shape, device) -> partial buffers, kept (CUDA-graph safe: fixed addresses)


def split_kv_attention(q: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, base: torch.Tensor,
                       scale: float, splits: int | None = None, fp32_out: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """See the module docstring. splits: force S (tests); default fills the card."""
    if k_rows.stride(-1) != 1 or v_rows.stride(-1) != 1:
        raise ValueError("split-KV attention needs a unit stride on the head dimension")
    c, hkv = k_rows.shape[1], k_rows.shape[2]
    strides = (k_rows.stride(0), k_rows.stride(1), k_rows.stride(2), v_rows.stride(0), v_rows.stride(1),
               v_rows.stride(2))
    return _attend(q, k_rows, v_rows, None, 0, c, hkv, strides, base, scale, splits, fp32_out)


def table_attention(q: torch.Tensor, table: torch.Tensor, layer: int, base: torch.Tensor, hkv: int, scale: float,
                    origin: torch.Tensor, splits: int | None = None, fp32_out: bool = False, keys: int = 65536
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """split_kv_attention where each row's keys and values lie in a buffer of their own (attention/table.py):
    row a of layer ``layer`` reads the token-major (C_a, Hkv, D) planes that start table[layer, 0, a] /
    table[layer, 1, a] elements after origin's first (multiples of 8). table: (layers, 2, A) int64 on the
    device, buffers in q's dtype; the caller keeps
    base[a] + Tb <= C_a (no capacity is checked). keys: the longest rows expected, for the split count only
    (a CUDA graph keeps the count it was captured with). The same math and results as split_kv_attention
    over a copy of the rows into one batch; the addresses are read on the device, so a CUDA graph replays over
    whichever buffers the table names at the time."""
    d = q.shape[-1]
    strides = (0, hkv * d, d, 0, hkv * d, d)
    if splits is None:
        splits = _splits(q, hkv, keys)
    return _attend(q, origin, origin, table, layer, 1 << 30, hkv, strides, base, scale, splits, fp32_out)


def _splits(q, hkv, keys):
    a, hq, tb, d = q.shape
    rows = tb * (hq // hkv)
    n_mt = -(-rows // tiles(rows, d)[0])
    return splits_for(hkv * a * n_mt, keys, sm_count(q.device))


def sm_count(dev: torch.device) -> int:
    """The device's streaming multiprocessors (8 off CUDA, for the interpreter), asked once per device."""
    if dev not in _SMS:
        _SMS[dev] = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 8
    return _SMS[dev]


def _attend(q, k, v, table, layer, c, hkv, strides, base, scale, splits, fp32_out):
    ks = _kernels()
    a, hq, tb, d = q.shape
    if hq % hkv:
        raise ValueError(f"{hq} query heads over {hkv} KV heads")
    if q.stride(-1) != 1:
        raise ValueError("split-KV attention needs a unit stride on the head dimension")
    g = hq // hkv
    rows = tb * g
    block_m, block_n = tiles(rows, d)
    n_mt = -(-rows // block_m)
    dev = q.device
    if splits is None:
        splits = _splits(q, hkv, c)
    key = (splits, a, hq, tb, d, dev)
    if key not in _SCRATCH:
        _SCRATCH[key] = (torch.empty((splits, a, hq, tb, d), dtype=torch.float32, device=dev),
                         torch.empty((splits, a, hq, tb), dtype=torch.float32, device=dev))
    o_part, l_part = _SCRATCH[key]
    if base.dtype not in (torch.int32, torch.int64):
        base = base.to(torch.int32)
    paged = table is not None
    ks["split"][(n_mt, splits, a * hkv)](
        q, k, v, base, o_part, l_part, table if paged else base, layer, a,
        q.stride(0), q.stride(1), q.stride(2), *strides,
        o_part.stride(0), o_part.stride(1), o_part.stride(2), o_part.stride(3),
        l_part.stride(0), l_part.stride(1), l_part.stride(2),
        c, tb, scale * 1.4426950408889634,
        HKV=hkv, G=g, D=d, S=splits, BLOCK_M=block_m, BLOCK_N=block_n, PAGED=paged, num_warps=4, num_stages=3)
    return merge_splits(o_part, l_part, torch.float32 if fp32_out else q.dtype)


def merge_splits(o_part: torch.Tensor, l_part: torch.Tensor, dtype, token_major: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The splits' partials merged by their log-sum-exp (fp32), one small launch: o_part (S, ..., Hq, Tb, D)
    and l_part (S, ..., Hq, Tb) fp32 contiguous -> out (..., Hq, Tb, D) in ``dtype``, lse (..., Hq, Tb) fp32.
    token_major (o_part (S, Hq, Tb, D)): out is a (Hq, Tb, D) view of (Tb, Hq, D) memory, so the decoder's
    transpose back to tokens x heads copies nothing."""
    splits, d = o_part.shape[0], o_part.shape[-1]
    hq, tb = o_part.shape[-3], o_part.shape[-2]
    if token_major:
        if o_part.dim() != 4:
            raise ValueError("token-major output is for one row: o_part (S, Hq, Tb, D)")
        out = torch.empty((tb, hq, d), dtype=dtype, device=o_part.device).transpose(0, 1)
    else:
        out = torch.empty(o_part.shape[1:], dtype=dtype, device=o_part.device)
    lse = torch.empty(l_part.shape[1:], dtype=torch.float32, device=o_part.device)
    _kernels()["merge"][(lse.numel(),)](o_part, l_part, out, lse, o_part.stride(0), l_part.stride(0), splits, tb,
                                        out.stride(-3), out.stride(-2), D=d,
                                        BLOCK_S=max(2, 1 << (splits - 1).bit_length()), num_warps=4, **pdl.launch_args(o_part.device))
    return out, lse
