"""Phase 2 (star and ring): query and generated tokens attend to every worker's KV exactly.

Each worker computes the partial attention of the new tokens over its context shard; the query host also
over the query/generated tokens it alone stores. The partials (out, lse) of the whole batch are packed into
one fp32 tensor and all-gathered once per layer, then merged in the same order on every worker, so all
workers continue with the same hidden states.
"""

from __future__ import annotations

import torch

from ..kv.shard import BatchedDecodeKV, ContextShard, QueryCache
from .merge import merge_partials, merge_two, pack, unpack
from .partial import empty_partial, masked_partial, partial_attention


def merge_over_workers(group, out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """This worker's partial (out (A, Hq, T, D), lse (A, Hq, T)) -> the exact attention over every worker's
    KV: one packed all-gather (W, A, Hq, T, D + 1), merged in the same order on every worker. Returns out."""
    if group.world_size == 1:
        return out
    return merge_partials(*unpack(group.all_gather(pack(out, lse))))[0]


class GlobalAttention:
    """New tokens of A samples: q (A, Hq, T, D); k, v (A, Hkv, T, D). Returns (A, Hq, T, D).

    shards[a] is sample a's context shard on this worker; caches[a] its query/generated KV (query host
    only, else None). ``static``: decode with fixed shapes (one token per sample, cache length on the device),
    so the step can be captured in a CUDA graph.
    """

    def __init__(self, group, shards: list[ContextShard], caches: list[QueryCache] | None, static: bool = False):
        self.group = group
        self.shards = shards
        self.caches = caches
        self.static = static

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        outs, lses = [], []
        for a, shard in enumerate(self.shards):
            qa = q[a:a + 1]
            sk, sv = shard.get(layer)
            o, l = empty_partial(qa) if sk is None or sk.shape[2] == 0 else partial_attention(qa, sk, sv, scale)
            if self.caches is not None:
                own = _own_static if self.static else _own
                o, l = merge_two(o, l, *own(self.caches[a], layer, qa, k[a:a + 1], v[a:a + 1], scale))
            outs.append(o)
            lses.append(l)
        out, lse = (outs[0], lses[0]) if len(outs) == 1 else (torch.cat(outs), torch.cat(lses))
        return merge_over_workers(self.group, out, lse).to(q.dtype)


class BatchedGlobalAttention:
    """Static decode of A samples over one padded buffer (kv/shard.py BatchedDecodeKV): one write, one masked
    attention and one collective per layer for the whole batch. Same math as GlobalAttention(static=True).

    q: (A, Hq, 1, D); k, v: (A, Hkv, 1, D). Returns (A, Hq, 1, D).
    """

    def __init__(self, group, kv: BatchedDecodeKV):
        self.group = group
        self.kv = kv
        self.valid = None

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        if self.kv.has_own:
            self.kv.write(layer, k, v)
        if layer == 0:  # the slots are the same in every layer of a step: build the mask once per step
            self.valid = self.kv.valid()[:, None, None, None, :]  # (A, 1, 1, 1, Tk) against (A, Hkv, G, 1, Tk)
        out, lse = masked_partial(q, self.kv.k[layer], self.kv.v[layer], scale, self.valid)
        return merge_over_workers(self.group, out, lse).to(q.dtype)


def _own(cache: QueryCache, layer, q, k, v, scale):
    """Causal attention of the new tokens over the host's query/generated KV (earlier ones + themselves).

    q: (1, Hq, T, D); k, v: (1, Hkv, T, D).
    """
    t, prev = q.shape[2], cache.length
    cache.write(layer, k, v)
    if t == 1:  # decode: one token sees every earlier own token and itself, no mask
        ck, cv = cache.view(layer, prev + 1)
        return partial_attention(q, ck, cv, scale)
    o, l = partial_attention(q, k, v, scale, causal=True)
    if prev > 0:
        ck, cv = cache.view(layer, prev)
        o, l = merge_two(o, l, *partial_attention(q, ck, cv, scale))
    return o, l


def _own_static(cache: QueryCache, layer, q, k, v, scale):
    """Decode over the preallocated cache: write at the device-side slot, attend to the valid slots."""
    cache.write_static(layer, k, v)
    return masked_partial(q, cache.k[layer], cache.v[layer], scale, cache.valid_static())
