"""A device table of token-major KV buffers -- the Arenas (decode.py) of the sequences a server runs together --
so one fixed-shape step serves whichever sequences run: its kernels read each row's buffer address from the
table (attention/split_kv.py table_attention) and write the new tokens' KV through it (``write``), and a
sequence joining or leaving rewrites only the table. A CUDA graph captured over a table replays over whatever
buffers the table names at the time.

Buffers: rows (layers, 2, C_a, H_kv, D) contiguous, row a's own capacity C_a. Table: (layers, 2, A) int64 on the
device, where rows[layer, s] of row a's buffer starts, in elements after the spare buffer's first (the kernels'
base pointer: offsets the compiler knows are 16-byte multiples, so its loads and stores are vectorized). A row without a sequence points at a small spare buffer
(what it computes is never read). Positions: base (A,) on the device, the slot of each row's first new token.
"""

from __future__ import annotations

import torch

from .. import pdl
from . import partial
from .partial import masked_partial
from .split_kv import available as split_available
from .split_kv import table_attention


def kernels_ok(dtype, device, head_dim: int) -> bool:
    """Whether the table's Triton kernels serve this dtype and device: CUDA half precision, Triton there, and no
    STAR_RUNTIME_ATTN_KERNEL naming another kernel (the table path then is not taken on a GPU)."""
    key = (dtype, str(device), head_dim)
    probe = _PROBES.get(key)
    if probe is None:  # an empty tensor of the kind asked about, made once (each request asks)
        probe = _PROBES[key] = torch.empty(0, head_dim, dtype=dtype, device=device)
    return partial._use_split(probe)


_PROBES: dict = {}


class KVTable:
    """Rows named by addresses. ``kernel``: the Triton kernels read through the table (kernels_ok); elsewhere
    (the CPU) the same math runs row by row over the buffers themselves -- not capturable, as a graph would keep
    the buffers it saw. The table keeps no buffer alive between calls (``release``): an arena dropped from its
    pool is freed, and every call names its rows afresh before anything reads them."""

    def __init__(self, size: int, num_layers: int, hkv: int, d: int, dtype, device, spare_tokens: int = 128):
        self.size, self.layers, self.hkv, self.d = size, num_layers, hkv, d
        self.spare = torch.zeros((num_layers, 2, spare_tokens, hkv, d), dtype=dtype, device=device)
        self.device = self.spare.device  # with its index (cuda:0), as the buffers' devices compare
        self.table = torch.zeros((num_layers, 2, size), dtype=torch.int64, device=self.device)
        self.kernel = kernels_ok(dtype, self.device, d)
        self.buffers: list[torch.Tensor | None] = []
        self.named: tuple = ()
        self.set([None] * size)

    def set(self, buffers: list[torch.Tensor | None]) -> None:
        """Row a reads and writes buffers[a] ((layers, 2, C_a, H_kv, D), contiguous) or, for None, the spare."""
        if len(buffers) != self.size:
            raise ValueError(f"{len(buffers)} buffers for a table of {self.size} rows")
        named = tuple((b.data_ptr(), b.shape[2]) if b is not None else None for b in buffers)
        if named == self.named:  # the same addresses and capacities: the same table
            self.buffers = list(buffers)
            return
        host = torch.empty((self.layers, 2, self.size), dtype=torch.int64)
        planes = torch.arange(self.layers * 2, dtype=torch.int64).view(self.layers, 2)
        for a, rows in enumerate(buffers):
            r = self.spare if rows is None else rows
            if (not r.is_contiguous() or r.dtype != self.spare.dtype or r.device != self.device
                    or r.shape[0] != self.layers or r.shape[3:] != (self.hkv, self.d)):
                raise ValueError(f"row {a}: a buffer of shape {tuple(r.shape)} / {r.dtype} does not fit the table")
            start = r.data_ptr() - self.spare.data_ptr()
            if start % 16:
                raise ValueError(f"row {a}: a buffer not on a 16-byte boundary")
            host[:, :, a] = start // r.element_size() + planes * (r.shape[2] * self.hkv * self.d)
        self.table.copy_(host)
        self.buffers, self.named = list(buffers), named

    def release(self) -> None:
        """Forget the buffers (the device table keeps their addresses until the next ``set``)."""
        self.buffers = [None] * self.size

    def _rows(self, a: int) -> torch.Tensor:
        r = self.buffers[a]
        return self.spare if r is None else r

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, base: torch.Tensor) -> None:
        """k, v: (A, H_kv, T, D), the new tokens of each row, written at slots base[a] + t."""
        t = k.shape[2]
        if (self.kernel and k.dtype == v.dtype == self.spare.dtype and k.stride(-1) == 1 and v.stride(-1) == 1):
            kern = _write_kernel()
            kern[(self.size * t, self.hkv)](k, v, self.spare, self.table, base, layer, self.size,
                                            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1),
                                            v.stride(2), t, HKV=self.hkv, D=self.d, num_warps=1,
                                            **pdl.launch_args(k.device))
            return
        steps = torch.arange(t, device=self.device)
        for a in range(self.size):
            r = self._rows(a)
            slots = base[a] + steps
            r[layer, 0].index_copy_(0, slots, k[a].transpose(0, 1).to(r.dtype))
            r[layer, 1].index_copy_(0, slots, v[a].transpose(0, 1).to(r.dtype))

    def attend(self, layer: int, q: torch.Tensor, base: torch.Tensor, scale: float) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
        """q: (A, Hq, T, D); token t of row a sees slots < base[a] + t + 1 of its buffer. Returns out (A, Hq,
        T, D) in q's dtype and lse (A, Hq, T) fp32."""
        if self.kernel:
            return table_attention(q, self.table, layer, base, self.hkv, scale, self.spare)
        outs, lses = [], []
        t = q.shape[2]
        for a in range(self.size):
            r = self._rows(a)
            c = r.shape[2]
            lim = base[a].long() + torch.arange(t, device=q.device) + 1  # (T,)
            valid = (torch.arange(c, device=q.device)[None] < lim[:, None])[None, None, None]  # (1,1,1,T,C)
            o, l = masked_partial(q[a:a + 1], r[layer, 0].transpose(0, 1).unsqueeze(0),
                                  r[layer, 1].transpose(0, 1).unsqueeze(0), scale, valid)
            outs.append(o)
            lses.append(l)
        return torch.cat(outs).to(q.dtype), torch.cat(lses)


def write_slots(k: torch.Tensor, v: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, slots: torch.Tensor,
                rows: torch.Tensor) -> None:
    """One new token per row into token-major rows (a decode step's KV write): k, v (A, H_kv, 1, D); k_rows,
    v_rows (A, C, H_kv, D) (unit stride on D); slots (A,) on the device; rows = arange(A) on the device. Row
    a's token goes to [a, slots[a]]. On CUDA one Triton launch writes keys and values; elsewhere index_put."""
    if (k.device.type == "cuda" and k.dtype == v.dtype == k_rows.dtype == v_rows.dtype and k.stride(-1) == 1
            and v.stride(-1) == 1 and k_rows.stride(-1) == 1 and v_rows.stride(-1) == 1 and split_available(k)):
        a, hkv, _, d = k.shape
        _slots_kernel()[(a, hkv)](k, v, k_rows, v_rows, slots, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                                  k_rows.stride(0), k_rows.stride(1), k_rows.stride(2), v_rows.stride(0),
                                  v_rows.stride(1), v_rows.stride(2), D=d, num_warps=1)
        return
    k_rows[rows, slots] = k[:, :, 0]
    v_rows[rows, slots] = v[:, :, 0]


_KERNEL: dict = {}


def _slots_kernel():
    if "s" in _KERNEL:
        return _KERNEL["s"]
    import triton
    import triton.language as tl

    @triton.jit
    def write_slots_kernel(KN, VN, K, V, SLOTS, skn_a, skn_h, svn_a, svn_h, sk_a, sk_c, sk_h, sv_a, sv_c, sv_h,
                           D: tl.constexpr):
        a = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        slot = tl.load(SLOTS + a).to(tl.int64)
        d = tl.arange(0, D)
        tl.store(K + a * sk_a + slot * sk_c + h * sk_h + d, tl.load(KN + a * skn_a + h * skn_h + d))
        tl.store(V + a * sv_a + slot * sv_c + h * sv_h + d, tl.load(VN + a * svn_a + h * svn_h + d))

    _KERNEL["s"] = write_slots_kernel
    return write_slots_kernel


def _write_kernel():
    if "w" in _KERNEL:
        return _KERNEL["w"]
    import triton
    import triton.language as tl

    @triton.jit
    def table_write(KN, VN, ORIGIN, TAB, BASE, layer, n_tab, sk_a, sk_h, sk_t, sv_a, sv_h, sv_t, T,
                    HKV: tl.constexpr, D: tl.constexpr, PDL: tl.constexpr = False):
        at = tl.program_id(0)  # row a, new token t
        h = tl.program_id(1)
        a = at // T
        t = at % T
        slot = tl.load(BASE + a).to(tl.int64) + t
        d = tl.arange(0, D)
        kp = ORIGIN + tl.multiple_of(tl.load(TAB + (layer * 2) * n_tab + a), 8)
        vp = ORIGIN + tl.multiple_of(tl.load(TAB + (layer * 2 + 1) * n_tab + a), 8)
        if PDL:  # the table and the slots are the step's inputs, the new keys and values the kernel before's output
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        dst = slot * HKV * D + h * D + d
        tl.store(kp + dst, tl.load(KN + a * sk_a + h * sk_h + t * sk_t + d))
        tl.store(vp + dst, tl.load(VN + a * sv_a + h * sv_h + t * sv_t + d))

    _KERNEL["w"] = table_write
    return table_write
