"""Ordinary causal prefill whose KV is kept: dense phase 1, and the star anchor (computed once per worker)."""

from __future__ import annotations

import torch

from ..kv.shard import ContextShard
from .partial import partial_attention


class CausalPrefill:
    """The new tokens attend causally to themselves; their KV goes to ``store``.

    q: (1, Hq, T, D); k, v: (1, Hkv, T, D). ``keep`` (default all) drops trailing padding from what is stored.
    """

    def __init__(self, store: ContextShard, keep: int | None = None):
        self.store = store
        self.keep = keep

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        out, _ = partial_attention(q, k, v, scale, causal=True)
        keep = k.shape[2] if self.keep is None else self.keep
        self.store.set(layer, k[:, :, :keep], v[:, :, :keep])
        return out.to(q.dtype)


class CollectPrefill:
    """A batch of independent sequences, each attending causally to itself; every layer's K/V is kept.

    q: (B, Hq, T, D); k, v: (B, Hkv, T, D). After the forward, ``kv[layer]`` is (2, B, Hkv, T, D).
    Used for blocks encoded on their own (block mode): right padding never reaches a real token.
    """

    def __init__(self, num_layers: int):
        self.kv: list[torch.Tensor | None] = [None] * num_layers

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        out, _ = partial_attention(q, k, v, scale, causal=True)
        self.kv[layer] = torch.stack((k, v))
        return out.to(q.dtype)
