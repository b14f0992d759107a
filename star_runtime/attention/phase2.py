"""Phase 2 (star and ring): query and generated tokens attend to every worker's KV exactly.

Each worker computes the partial attention of the new tokens over its context shard; the query host also
over the query/generated tokens it alone stores. The partials (out, lse) are packed into one fp32 tensor and
all-gathered once per layer, then merged in the same order on every worker, so all workers continue with the
same hidden states.
"""

from __future__ import annotations

import torch

from ..kv.shard import ContextShard, QueryCache
from .merge import merge_partials, merge_two, pack, unpack
from .partial import empty_partial, partial_attention


class GlobalAttention:
    """q: (1, Hq, T, D) of T new tokens; k, v: (1, Hkv, T, D). Returns (1, Hq, T, D)."""

    def __init__(self, group, shard: ContextShard, cache: QueryCache | None):
        self.group = group
        self.shard = shard
        self.cache = cache  # only on the query host

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        sk, sv = self.shard.get(layer)
        if sk is None or sk.shape[2] == 0:
            out, lse = empty_partial(q)
        else:
            out, lse = partial_attention(q, sk, sv, scale)
        if self.cache is not None:
            out, lse = merge_two(out, lse, *self._own(layer, q, k, v, scale))
        if self.group.world_size > 1:
            gathered = self.group.all_gather(pack(out, lse))  # (W, 1, Hq, T, D + 1)
            out, lse = merge_partials(*unpack(gathered))
        return out.to(q.dtype)

    def _own(self, layer, q, k, v, scale):
        """Causal attention of the new tokens over the host's query/generated KV (earlier ones + themselves)."""
        cache, t = self.cache, q.shape[2]
        prev = cache.length
        cache.write(layer, k, v)
        if t == 1:  # decode: one token sees every earlier own token and itself, no mask
            ck, cv = cache.view(layer, prev + 1)
            return partial_attention(q, ck, cv, scale)
        o, l = partial_attention(q, k, v, scale, causal=True)
        if prev > 0:
            ck, cv = cache.view(layer, prev)
            o, l = merge_two(o, l, *partial_attention(q, ck, cv, scale))
        return o, l
