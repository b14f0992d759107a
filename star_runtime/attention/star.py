"""Star Attention phase 1: every block attends causally to [anchor ; itself], all of a worker's blocks at once.

The anchor (the first ``anchor_block_size`` context tokens) KV is encoded once, on rank 0, and broadcast
(kv/anchor.py); each block attends to it as a separate partial, merged exactly with the block's own causal
partial, so the anchor never goes through the MLPs again per block or per worker. Block 0 is the start of
the context and sees no anchor (lse = -inf for that part).
"""

from __future__ import annotations

import torch

from ..kv.shard import ContextShard
from .merge import merge_two_like
from .partial import partial_attention


class StarBlocks:
    """Attention state for one batched forward of a worker's blocks.

    q: (nb, Hq, S, D); k, v: (nb, Hkv, S, D) -- nb blocks of S tokens with global position ids.
    anchor: per-layer anchor KV (1, Hkv, A, D) through ``get(layer)`` (a SharedAnchor), or None when every
    block of the batch is block 0.
    sees_anchor: (nb,) bool, False for block 0.
    keep: real tokens among the nb*S (trailing padding of the last context block is not stored).
    """

    def __init__(self, shard: ContextShard, anchor, sees_anchor: torch.Tensor, keep: int):
        self.shard = shard
        self.anchor = anchor
        self.sees_anchor = sees_anchor
        self.keep = keep

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        nb, hq, s, d = q.shape
        hkv = k.shape[1]
        out, lse = partial_attention(q, k, v, scale, causal=True, native_out=True)
        if self.anchor is not None:
            ak, av = self.anchor.get(layer)
            # All blocks' queries against the one anchor: a single (1, Hq, nb*S, D) call, no KV copies.
            qa = q.transpose(0, 1).reshape(1, hq, nb * s, d)
            oa, la = partial_attention(qa, ak, av, scale, native_out=True)
            oa = oa.view(hq, nb, s, d).transpose(0, 1)
            la = la.view(hq, nb, s).transpose(0, 1)
            la = la.masked_fill(~self.sees_anchor.view(nb, 1, 1), float("-inf"))
            # the kernels' half-precision outputs are read in fp32 and written back in q's dtype, one kernel
            out, lse = merge_two_like(out, lse, oa, la)
        flat_k = k.transpose(0, 1).reshape(1, hkv, nb * s, d)[:, :, : self.keep]
        flat_v = v.transpose(0, 1).reshape(1, hkv, nb * s, d)[:, :, : self.keep]
        self.shard.append(layer, flat_k, flat_v)
        return out.to(q.dtype)
