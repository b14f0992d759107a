"""Cached blocks into one context: gather each block's KV from its store entry, rotate its keys to the block's
offset (RoPE re-encoding, attention/rope.py) and write keys and values token-major into a destination, in one
pass over the bytes (a Triton kernel on GPUs: every entry read once, the destination written once).

Entries: per block (layers, 2, H_kv, L_b, D) (keys, values; positions 0..L_b-1). Destination: (layers, 2, C,
H_kv, D) with C >= the blocks' total length; token t of the context lands at [:, :, t]. cos / sin: (L, R/2)
fp32 per destination token (R = rotary dims, the first R of D; the rest are copied as they are).
"""

from __future__ import annotations

import torch


def gather_rotate(entries: list[torch.Tensor], dst: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  tok_block: torch.Tensor | None = None, tok_local: torch.Tensor | None = None) -> None:
    """Fill dst[:, :, :L] from the entries (L = their total length); see the module docstring for shapes.
    tok_block (L,) int32 / tok_local (L,): each token's entry and position in it, on dst's device (made here
    if not given)."""
    if dst.device.type == "cuda" and _triton_ok():
        try:
            return _gather_rotate_triton(entries, dst, cos, sin, tok_block, tok_local)
        except Exception as e:  # noqa: BLE001 -- a Triton build or launch problem: the torch path computes the same
            _STATE["triton"] = False
            import sys

            print(f"[star-runtime] fused block gather unavailable ({type(e).__name__}: {str(e)[:80]}); "
                  "using the torch path", file=sys.stderr)
    _gather_rotate_torch(entries, dst, cos, sin)


def _gather_rotate_torch(entries, dst, cos, sin) -> None:
    r = 2 * cos.shape[-1]
    off = 0
    for e in entries:
        n = e.shape[3]
        k = e[:, 0].float()  # (layers, H_kv, n, D)
        c, s = cos[off:off + n], sin[off:off + n]  # (n, R/2)
        x1, x2 = k[..., : r // 2], k[..., r // 2: r]
        rot = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s, k[..., r:]), dim=-1)
        dst[:, 0, off:off + n] = rot.to(dst.dtype).transpose(1, 2)
        dst[:, 1, off:off + n] = e[:, 1].transpose(1, 2)
        off += n


_STATE = {"triton": None}


def _triton_ok() -> bool:
    if _STATE["triton"] is None:
        try:
            import triton  # noqa: F401

            _STATE["triton"] = True
        except ImportError:
            _STATE["triton"] = False
    return _STATE["triton"]


_KERNEL = {}


def _kernel():
    if "k" in _KERNEL:
        return _KERNEL["k"]
    import triton
    import triton.language as tl

    @triton.jit
    def gather_rotate_kernel(table, lens, tok_block, tok_local, cos, sin, dst, L, C, HKV: tl.constexpr,
                             D: tl.constexpr, HALF: tl.constexpr, REST: tl.constexpr, BLOCK_T: tl.constexpr):
        pid_t = tl.program_id(0)
        lh = tl.program_id(1)
        layer = lh // HKV
        head = lh % HKV
        t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        tmask = t < L
        blk = tl.load(tok_block + t, mask=tmask, other=0)
        pos = tl.load(tok_local + t, mask=tmask, other=0).to(tl.int64)
        base = tl.load(table + blk, mask=tmask, other=0)
        nb = tl.load(lens + blk, mask=tmask, other=1).to(tl.int64)
        src = base.to(tl.pointer_type(dst.dtype.element_ty))
        half = HALF  # the rotary dims are [0, 2 * HALF)
        dh = tl.arange(0, HALF)
        # entry element (layer, s, head, pos, d) at ((layer * 2 + s) * HKV + head) * nb * D + pos * D + d
        k_row = ((layer * 2 + 0) * HKV + head) * nb * D + pos * D
        v_row = ((layer * 2 + 1) * HKV + head) * nb * D + pos * D
        m2 = tmask[:, None]
        x1 = tl.load(src[:, None] + k_row[:, None] + dh[None, :], mask=m2, other=0.0).to(tl.float32)
        x2 = tl.load(src[:, None] + k_row[:, None] + half + dh[None, :], mask=m2, other=0.0).to(tl.float32)
        c = tl.load(cos + t[:, None] * half + dh[None, :], mask=m2, other=0.0)
        s = tl.load(sin + t[:, None] * half + dh[None, :], mask=m2, other=0.0)
        t64 = t.to(tl.int64)
        # destination element (layer, s, t, head, d) at (((layer * 2 + s) * C + t) * HKV + head) * D + d
        dk = ((layer * 2 + 0) * C + t64) * HKV * D + head * D
        dv = ((layer * 2 + 1) * C + t64) * HKV * D + head * D
        out_ty = dst.dtype.element_ty
        tl.store(dst + dk[:, None] + dh[None, :], (x1 * c - x2 * s).to(out_ty), mask=m2)
        tl.store(dst + dk[:, None] + half + dh[None, :], (x2 * c + x1 * s).to(out_ty), mask=m2)
        dd = tl.arange(0, D)
        v = tl.load(src[:, None] + v_row[:, None] + dd[None, :], mask=m2, other=0.0)
        tl.store(dst + dv[:, None] + dd[None, :], v, mask=m2)
        if REST > 0:  # keys' dims past the rotary ones are copied as they are
            rest = 2 * HALF + tl.arange(0, REST)
            kr = tl.load(src[:, None] + k_row[:, None] + rest[None, :], mask=m2, other=0.0)
            tl.store(dst + dk[:, None] + rest[None, :], kr, mask=m2)

    _KERNEL["k"] = gather_rotate_kernel
    return gather_rotate_kernel


def _gather_rotate_triton(entries, dst, cos, sin, tok_block=None, tok_local=None) -> None:
    import triton

    layers, _, cap, hkv, d = dst.shape
    r = 2 * cos.shape[-1]
    if any(not e.is_contiguous() or e.dtype != dst.dtype or e.device != dst.device for e in entries):
        raise ValueError("entries must be contiguous, in the destination's dtype and device")
    if r & (r - 1) or d & (d - 1) or (d - r) & (d - r - 1):
        raise ValueError(f"head dim {d} / rotary dim {r} not powers of two")
    lens = [e.shape[3] for e in entries]
    total = sum(lens)
    dev = dst.device
    meta = torch.tensor([e.data_ptr() for e in entries] + lens, dtype=torch.int64)
    meta = meta.to(dev)
    table, lens_t = meta[:len(entries)], meta[len(entries):].to(torch.int32)
    if tok_block is None:
        n = torch.tensor(lens, device=dev)
        tok_block = torch.repeat_interleave(torch.arange(len(entries), device=dev, dtype=torch.int32), n,
                                            output_size=total)
        tok_local = torch.arange(total, device=dev) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n,
                                                                              output_size=total)
    block_t = 32
    grid = (triton.cdiv(total, block_t), layers * hkv)
    _kernel()[grid](table, lens_t, tok_block, tok_local, cos.contiguous(), sin.contiguous(), dst, total, cap,
                    HKV=hkv, D=d, HALF=r // 2, REST=d - r, BLOCK_T=block_t)
