"""A short query over cached blocks where they lie: no copy into a context, no key rotation.

A block cached at positions 0..n-1 and placed at offset o of a prompt holds keys R(j) k_j; the prompt needs
R(o + j) k_j. Rotations compose and are orthogonal, so q . R(o + j) k_j = (R(-o) q) . (R(j) k_j): rotating the
*query* by -o, once per block, gives the scores of the re-encoded keys over the keys as stored (the exact
trick of attention/rope.py moved from n keys to one query). So the first token of a cached-passage prompt can
be computed before (or without) the context being gathered into one buffer (kv/gather.py). Exact in real
arithmetic; in floating point the rotation rounds once on the query instead of once on every key.

Pages: each block is cut into pages of at most CHUNK keys, and the query's own KV (in its arena, causal) is one
more page. A split of the kernel walks every S-th page, rotating the query by the page's angle, and folds its
keys into a running softmax; the S splits are merged by their log-sum-exp in fp32 (split_kv.merge_splits).

Table (P + 1, 7) int64 on the device, page p < P, all in elements: the offset of its layer-0 head-0 key from
the own rows' first element (the kernel's base pointer; a multiple of 8, as CUDA allocations are aligned), the
layer stride, the key-to-value distance, the head stride, the token stride, its number of keys, and causal (1: query token t sees keys j <= t; 0: every key); row P holds the number of pages in use. Rotation
(2, P, R/2) fp32: cos and sin of each page's angles (offset x inverse frequency, fp64 before rounding; 0 for the
own page). One table of P pages serves every request up to P (a CUDA graph keeps its buffers).

Only full-width RoPE (rotary dims = head dim) and blocks encoded with the prompt's own frequencies take this
path (``usable``); the rest are gathered and re-encoded key by key.

q: (1, Hq, Tb, D) after the model's RoPE at the query's positions. Entries: (layers, 2, H_kv, n, D) contiguous.
Own rows: (layers, 2, C, H_kv, D) contiguous (an Arena), the query's KV at slots [start, start + Tb).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import pdl
from ..staging import Staging
from . import partial
from .merge import merge_partials
from .partial import partial_attention
from .split_kv import merge_splits, sm_count, tiles

CHUNK = 512  # keys per page at most


def usable(dtype, device, head_dim: int, rotary_dim: int) -> bool:
    """Whether the in-place path serves a model here: full-width RoPE, and on a GPU the Triton kernel for
    half precision and head dims >= 32 (its half-width dots; the torch form, on the CPU, is not capturable in
    a CUDA graph)."""
    if rotary_dim != head_dim or not _OK["ok"]:
        return False
    # asked by every request: answered once per kind and kernel choice (a failed split kernel or another kernel
    # named is part of the key)
    key = (dtype, device, head_dim, partial._KERNEL, partial._SPLIT_OK["ok"])
    ok = _USABLE.get(key)
    if ok is None:
        from .table import kernels_ok

        dev = torch.device(device)
        ok = _USABLE[key] = dev.type == "cpu" or (head_dim >= 32 and kernels_ok(dtype, dev, head_dim))
    return ok


_USABLE: dict = {}


def pages_needed(lengths, chunk: int = CHUNK) -> int:
    """Pages for blocks of these lengths plus the query's own page."""
    return sum(-(-int(n) // chunk) for n in lengths) + 1


def capacity_bucket(pages: int) -> int:
    """Tables come in powers of two from 16 pages (one CUDA graph per bucket)."""
    p = 16
    while p < pages:
        p *= 2
    return p


class PageTable:
    """One request's pages in fixed buffers. ``fill`` names them; ``attend`` runs the query over them."""

    def __init__(self, capacity: int, hkv: int, half: int, device, kernel: bool, chunk: int = CHUNK,
                 meta: tuple[torch.Tensor, torch.Tensor] | None = None):
        """meta: a (capacity + 1, 7) int64 device tensor and its pinned host twin owned by the caller, who waits
        for its last upload before ``fill`` and uploads it after (one copy with the caller's own inputs); by
        default the table's own, uploaded by ``fill``."""
        self.capacity, self.hkv, self.half, self.kernel, self.chunk = capacity, hkv, half, kernel, chunk
        self.device = torch.device(device)
        self.rot = torch.zeros((2, capacity, half), dtype=torch.float32, device=self.device)
        if meta is None:
            self.meta = torch.zeros((capacity + 1, 7), dtype=torch.int64, device=self.device)  # + the count row
            self.meta_upload, self._meta_host = Staging(self.meta), None  # a pinned twin: no stream sync per fill
        else:
            self.meta, self._meta_host = meta
            self.meta_upload = None
            if self.meta.shape != (capacity + 1, 7) or self._meta_host.shape != (capacity + 1, 7):
                raise ValueError(f"the page table's rows must be ({capacity + 1}, 7)")
        self.rot_upload = Staging(self.rot)
        self.parts: list = []  # the torch form's view of the same pages
        self._rot_key, self._rot_cache = None, {}
        self._page_rows: dict = {}  # an entry's (address, length, ...) -> its pages' table rows
        self._freq_of, self._freq = None, None  # the frequencies' tensor last given, as fp64 numpy
        self._rot_held = None  # what the device rotation table holds: (frequencies, offsets, pages per block)
        self.config: tuple | None = None  # (BLOCK_M, BLOCK_N, warps, stages[, fast[, splits]]) to try

    def fill(self, entries: list[torch.Tensor], offsets: list[int], inv_freq: torch.Tensor, own: torch.Tensor,
             start: int, own_len: int, origin: torch.Tensor | None = None) -> None:
        """entries[i] (layers, 2, H_kv, n_i, D) placed at offsets[i]; inv_freq (R/2,) the prompt's frequencies;
        own (layers, 2, C, H_kv, D): the query's rows, its own KV at [start, start + own_len). origin: the
        tensor whose first element the offsets count from (the kernel's base pointer; default own) -- one that
        stays the same keeps a captured CUDA graph valid for other rows."""
        if not self.kernel:  # (the kernel's table counts its pages below, as it names them)
            need = pages_needed([e.shape[3] for e in entries], self.chunk)
            if need > self.capacity:
                raise ValueError(f"{need} pages for a table of {self.capacity}")
        if inv_freq is not self._freq_of:  # the same tensor (a re-encoder keeps one) is read once
            self._freq_of, self._freq = inv_freq, inv_freq.detach().double().cpu().numpy()
        freq = self._freq
        self.parts = [(e, o) for e, o in zip(entries, offsets)] + [(own, start, own_len)]
        self.freq = freq  # the torch form's too: it serves a table filled for the kernel after a kernel failure
        if not self.kernel:
            return
        _, _, cap, hkv, d = own.shape
        elt = own.element_size()
        origin = own if origin is None else origin
        base = origin.data_ptr()
        own_at = own.data_ptr() - base
        if own_at % 16:
            raise ValueError("the query's rows must start on a 16-byte boundary")
        self.kv = origin
        # each entry's pages (columns 0-5 of the table) follow from its address relative to the origin and its
        # length alone: remembered, so a request's table is a concatenation (the same passages recur)
        cache = self._page_rows
        if len(cache) > 65536:
            cache.clear()
        rows, counts = [], []
        for e in entries:  # (a prompt's dozens of passages: each costs a few attribute reads)
            if not e.is_contiguous():
                raise ValueError("cached entries must be contiguous")
            key = (e.data_ptr() - base, e.shape[3], e.dtype, hkv, d)
            r = cache.get(key)
            if r is None:  # (an address names one device and one of the store's tensors at a time: its dtype,
                # device and shape checked when the table first meets it)
                if e.dtype != own.dtype or e.device != own.device or e.shape[2:] != (hkv, e.shape[3], d):
                    raise ValueError("cached entries must be in the rows' dtype, device and head shape")
                r = cache[key] = self._entry_pages(key)
            rows.append(r)
            counts.append(len(r))
        p = sum(counts)
        if p + 1 > self.capacity:
            raise ValueError(f"{p + 1} pages for a table of {self.capacity}")
        meta = (self.meta_upload.buffer() if self.meta_upload is not None else self._meta_host).numpy()
        meta[:] = 0
        if p:
            meta[:p, :6] = np.concatenate(rows)
        meta[p] = (own_at // elt + start * hkv * d, 2 * cap * hkv * d, cap * hkv * d, d, hkv * d, own_len, 1)
        meta[self.capacity, 0] = p + 1
        if self.meta_upload is not None:  # else the owner uploads it with its own inputs
            self.meta_upload.push()
        # the pages' angles follow from the offsets alone (blocks come in prompt order, so a prompt of the same
        # block lengths has the same offsets whatever its passages): uploaded only when they change
        held = (freq.tobytes(), tuple(offsets), tuple(counts))
        if held != self._rot_held:
            rot = self.rot_upload.buffer().numpy()
            rot[0], rot[1] = 1.0, 0.0  # the own page and unused ones: angle 0
            if p:
                per_block = self._rotations(offsets, freq)  # (blocks, 2, R/2)
                if p != len(entries):  # blocks of several pages: each page takes its block's angles
                    per_block = np.repeat(per_block, counts, axis=0)
                rot[:, :p] = per_block.transpose(1, 0, 2)
            self.rot_upload.push()
            self._rot_held = held

    def _entry_pages(self, key: tuple) -> np.ndarray:
        """(pages, 6) int64 table rows of one entry: key (its first element's byte offset from the origin, its
        keys n, dtype, KV heads, head dim) -> per page of at most ``chunk`` keys its first key's element offset,
        the layer stride, the key-to-value distance, the head stride, the token stride, its keys."""
        at, n, dtype, hkv, d = key
        elt = dtype.itemsize
        if at % 16:
            raise ValueError("cached entries must start on 16-byte boundaries")
        c = np.arange(-(-n // self.chunk), dtype=np.int64)
        out = np.empty((len(c), 6), dtype=np.int64)
        out[:, 0] = at // elt + c * self.chunk * d
        out[:, 1], out[:, 2], out[:, 3], out[:, 4] = 2 * hkv * n * d, hkv * n * d, n * d, d
        out[:, 5] = np.minimum(self.chunk, n - c * self.chunk)
        return out

    def _rotations(self, offsets: list[int], freq: np.ndarray) -> np.ndarray:
        """(blocks, 2, R/2) fp32 cos and sin of offset x frequency (fp64 before rounding), remembered per offset
        for these frequencies: the same offsets recur from request to request, and a table of 128 pages took a
        quarter of a millisecond of cos / sin on the host before the first token."""
        key = freq.tobytes()
        if key != self._rot_key or len(self._rot_cache) > 65536:
            self._rot_key, self._rot_cache = key, {}
        cache = self._rot_cache
        miss = sorted({int(o) for o in offsets} - cache.keys())
        if miss:
            angle = np.array(miss, dtype=np.float64)[:, None] * freq[None, :]
            for o, r in zip(miss, np.stack((np.cos(angle), np.sin(angle)), 1).astype(np.float32)):
                cache[o] = r
        return np.stack([cache[int(o)] for o in offsets])

    def attend(self, layer: int, q: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """q (1, Hq, Tb, D) -> out (1, Hq, Tb, D) in q's dtype, lse (1, Hq, Tb) fp32."""
        if self.kernel and _OK["ok"]:
            try:
                return _kernel_attend(self, layer, q, scale)
            except Exception as e:  # noqa: BLE001 -- a Triton build or launch problem: the torch form computes the same
                _OK["ok"] = False
                import sys

                print(f"[star-runtime] in-place block attention kernel unavailable ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:80]}); using its torch form, and gathering cached blocks first "
                      "from now on", file=sys.stderr)
        return _torch_attend(self, layer, q, scale)


_OK = {"ok": True}  # off after a kernel failure: no more deferred gathers (usable), the torch form meanwhile


def rotate_query(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """q (..., D) fp32 rotated by minus the angles whose cos / sin (R/2,) are given, pairs (i, i + R/2)."""
    h = cos.shape[-1]
    q1, q2 = q[..., :h], q[..., h:2 * h]
    return torch.cat((q1 * cos + q2 * sin, q2 * cos - q1 * sin, q[..., 2 * h:]), dim=-1)


def _torch_attend(table: PageTable, layer: int, q: torch.Tensor, scale: float):
    """The same math on any device, block by block (fp32), merged by merge_partials."""
    qf = q.float()
    outs, lses = [], []
    for part in table.parts[:-1]:
        e, o = part
        ang = torch.from_numpy(o * table.freq)
        r = rotate_query(qf, torch.cos(ang).float().to(q.device), torch.sin(ang).float().to(q.device))
        out, lse = partial_attention(r, e[layer, 0].unsqueeze(0).float(), e[layer, 1].unsqueeze(0).float(), scale)
        outs.append(out.float())
        lses.append(lse.float())
    own, start, n = table.parts[-1]
    k = own[layer, 0, start:start + n].transpose(0, 1).unsqueeze(0).float()
    v = own[layer, 1, start:start + n].transpose(0, 1).unsqueeze(0).float()
    out, lse = partial_attention(qf[:, :, :n], k, v, scale, causal=True)
    pad = q.shape[2] - n
    if pad:  # padding query rows: what they compute is never read
        out = torch.cat((out.float(), torch.zeros_like(qf[:, :, n:])), dim=2)
        lse = torch.cat((lse.float(), torch.zeros_like(qf[:, :, n:, 0])), dim=2)
    outs.append(out.float())
    lses.append(lse.float())
    out, lse = merge_partials(torch.stack(outs), torch.stack(lses))
    return out.to(q.dtype), lse


_KERNEL: dict = {}
_SCRATCH: dict = {}


def _kernel():
    if "k" in _KERNEL:
        return _KERNEL["k"]
    import triton
    import triton.language as tl

    @triton.jit
    def paged_kernel(Q, KV, META, ROT, O, L, layer, P, sq_h, sq_t, so_s, so_h, so_t, sl_s, sl_h, TB, scale_log2,
                     HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr, S: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FAST: tl.constexpr,
                     STAGES: tl.constexpr, PDL: tl.constexpr = False):
        mt = tl.program_id(0)
        s = tl.program_id(1)
        h = tl.program_id(2)
        rows = mt * BLOCK_M + tl.arange(0, BLOCK_M)  # folded row r = token t * G + head-in-group g
        t = rows // G
        g = rows % G
        row_ok = t < TB
        qh = h * G + g
        d = tl.arange(0, D)
        jl = tl.arange(0, BLOCK_N)
        count = tl.load(META + P * 7)  # pages in use; the rest of the table is not read
        if PDL:  # launched while the kernel before it runs (star_runtime/pdl.py): the table and the cached keys
            # and values are not its output, the query and the own page are
            if s < count:  # this split's first page's first key tile into L2 meanwhile
                m0 = META + s * 7
                j0 = tl.minimum(jl, tl.load(m0 + 5) - 1).to(tl.int64)  # (rows past a short page: its last)
                r0 = KV + tl.load(m0) + layer * tl.load(m0 + 1) + h * tl.load(m0 + 3) + j0 * tl.load(m0 + 4)
                nb = tl.full((BLOCK_N,), D * 2, tl.int32)
                tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.b32 $0, 0;", "=r,l,r",
                                          [r0, nb], dtype=tl.int32, is_pure=False, pack=1)
                tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.b32 $0, 0;", "=r,l,r",
                                          [r0 + tl.load(m0 + 2), nb], dtype=tl.int32, is_pure=False, pack=1)
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        qp = Q + qh[:, None] * sq_h + t[:, None] * sq_t
        e = tl.arange(0, HALF)  # RoPE pairs (i, i + HALF): the query and keys in halves, two half-width dots
        q1 = tl.load(qp + e[None, :], mask=row_ok[:, None], other=0.0)
        q2 = tl.load(qp + HALF + e[None, :], mask=row_ok[:, None], other=0.0)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, D), tl.float32)
        for p in range(s, count, S):
            mp = META + p * 7
            n = tl.load(mp + 5)
            # offsets in elements from KV, each a multiple of 8 (16 bytes): the loads below are vectorized
            kb = (KV + tl.multiple_of(tl.load(mp), 8) + layer * tl.multiple_of(tl.load(mp + 1), 8)
                  + h * tl.multiple_of(tl.load(mp + 3), 8))
            vo = tl.multiple_of(tl.load(mp + 2), 8)
            ts = tl.multiple_of(tl.load(mp + 4), 8)
            causal = tl.load(mp + 6)
            # the query rotated by minus the page's angles, the softmax scale (log2 units) folded in:
            # (q1 c + q2 s, q2 c - q1 s), rounded once to the keys' dtype
            c = tl.load(ROT + p * HALF + e)[None, :] * scale_log2
            sn = tl.load(ROT + P * HALF + p * HALF + e)[None, :] * scale_log2
            a1, a2 = q1.to(tl.float32), q2.to(tl.float32)
            r1 = (a1 * c + a2 * sn).to(Q.dtype.element_ty)
            r2 = (a2 * c - a1 * sn).to(Q.dtype.element_ty)
            lo = (n * 0).to(tl.int32)  # where the masked walk starts: past the whole tiles taken unmasked
            if FAST:
                if (causal == 0) & (ts == D):
                    # a cached page's whole tiles: contiguous keys, every one seen -- no masks; its last partial
                    # tile (passages of uneven length) goes to the masked walk below
                    n_full = ((n // BLOCK_N) * BLOCK_N).to(tl.int32)
                    for f0 in tl.range(0, n_full, BLOCK_N, num_stages=STAGES):
                        fb = kb + (f0 + jl)[:, None] * D
                        fqk = tl.dot(r1, tl.trans(tl.load(fb + e[None, :])))
                        fqk = tl.dot(r2, tl.trans(tl.load(fb + HALF + e[None, :])), fqk)
                        fm = tl.maximum(m_i, tl.max(fqk, 1))
                        fp = tl.exp2(fqk - fm[:, None])
                        fa = tl.exp2(m_i - fm)
                        l_i = l_i * fa + tl.sum(fp, 1)
                        fv = tl.load(fb + vo + d[None, :])
                        acc = acc * fa[:, None] + tl.dot(fp.to(fv.dtype), fv)
                        m_i = fm
                    lo = n_full
            for start in range(lo, n, BLOCK_N):
                j = (start + jl).to(tl.int64)
                kmask = j < n
                kp = kb + j[:, None] * ts
                qk = tl.dot(r1, tl.trans(tl.load(kp + e[None, :], mask=kmask[:, None], other=0.0)))
                qk = tl.dot(r2, tl.trans(tl.load(kp + HALF + e[None, :], mask=kmask[:, None], other=0.0)), qk)
                valid = kmask[None, :] & ((causal == 0) | (j[None, :] <= t[:, None]))
                qk = tl.where(valid, qk, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m_i - m_safe)
                pr = tl.exp2(qk - m_safe[:, None])
                l_i = l_i * alpha + tl.sum(pr, 1)
                v = tl.load(kp + vo + d[None, :], mask=kmask[:, None], other=0.0)
                acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v)
                m_i = m_new
        seen = l_i > 0
        out = acc / tl.where(seen, l_i, 1.0)[:, None]
        lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
        tl.store(O + s * so_s + qh[:, None] * so_h + t[:, None] * so_t + d[None, :], out, mask=row_ok[:, None])
        tl.store(L + s * sl_s + qh * sl_h + t, lse, mask=row_ok)

    _KERNEL["k"] = paged_kernel
    return paged_kernel


def page_splits(programs: int, sms: int) -> int:
    """Splits of the page walk: the largest power of two with programs x splits <= twice the SMs (two resident
    programs a card's SM at 64 x 64 tiles, 3 stages). H200, 50 query tokens, Llama-3-8B heads: 8 splits 40 / 108
    us at 8K / 32K against 44 / 113 for the next power up (split_kv.splits_for) and 49 / 156 for 4."""
    s = 1
    while s * 2 * programs <= 2 * sms:
        s *= 2
    return s


def _kernel_attend(table: PageTable, layer: int, q: torch.Tensor, scale: float):
    _, hq, tb, d = q.shape
    half = table.half
    if 2 * half != d:
        raise ValueError(f"head dim {d} with {2 * half} rotary dims: the in-place path needs full-width RoPE")
    if q.stride(-1) != 1:
        raise ValueError("the paged kernel needs a unit stride on the head dimension")
    hkv = table.hkv
    g = hq // hkv
    rows = tb * g
    block_m, block_n = tiles(rows, d)
    warps, stages, fast, want = 4, 3, 1, 0  # want: splits, 0 = as many as fill the card
    if table.config is not None:
        block_m, block_n, warps, stages, fast, want = (tuple(table.config) + (1, 0)[len(table.config) - 4:])
    n_mt = -(-rows // block_m)
    dev = q.device
    splits = min(table.capacity, want or page_splits(n_mt * hkv, sm_count(dev)))
    key = (splits, hq, tb, d, dev)
    if key not in _SCRATCH:
        _SCRATCH[key] = (torch.empty((splits, hq, tb, d), dtype=torch.float32, device=dev),
                         torch.empty((splits, hq, tb), dtype=torch.float32, device=dev))
    o_part, l_part = _SCRATCH[key]
    _kernel()[(n_mt, splits, hkv)](
        q, table.kv, table.meta, table.rot, o_part, l_part, layer, table.capacity, q.stride(1), q.stride(2),
        o_part.stride(0), o_part.stride(1), o_part.stride(2), l_part.stride(0), l_part.stride(1), tb,
        scale * 1.4426950408889634, HKV=hkv, G=g, D=d, HALF=half, S=splits, BLOCK_M=block_m, BLOCK_N=block_n,
        FAST=fast, STAGES=stages, num_warps=warps, num_stages=stages,
        **pdl.launch_args(dev))
    out, lse = merge_splits(o_part, l_part, q.dtype, token_major=True)  # (Hq, Tb, D) over (Tb, Hq, D) memory
    return out.unsqueeze(0), lse.unsqueeze(0)
