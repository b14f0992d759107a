"""Dense: ordinary causal prefill of the whole context on one worker (the baseline every mode is exact to,
or approximates on purpose)."""

from __future__ import annotations

import torch

from ..attention.hooks import attention_state
from ..attention.partial import partial_attention
from ..kv.shard import ContextShard
from ..models.loader import num_layers
from .base import Mode, run_decoder


class CausalPrefill:
    """The new tokens attend causally to themselves; their KV goes to ``store`` (a ContextShard, or star's
    SharedAnchor). q: (1, Hq, T, D); k, v: (1, Hkv, T, D)."""

    def __init__(self, store):
        self.store = store

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        out, _ = partial_attention(q, k, v, scale, causal=True)
        self.store.set(layer, k, v)
        return out.to(q.dtype)


@torch.inference_mode()
def encode_dense(model, ctx: torch.Tensor, prefill_layers: str = "auto") -> ContextShard:
    """ctx: (L,) long on the model device -> the whole context's KV. prefill_layers: --prefill_layers."""
    shard = ContextShard(num_layers(model))
    if ctx.numel() == 0:  # a prompt that is all query (a one-token completion): nothing to encode
        return shard
    pos = torch.arange(ctx.numel(), device=ctx.device)
    with attention_state(CausalPrefill(shard)):
        run_decoder(model, ctx.unsqueeze(0), pos.unsqueeze(0), prefill_layers)
    return shard


class DenseMode(Mode):
    name = "dense"  # a dense run has one worker (RunConfig.world_size)

    def encode(self, worker, req, cfg):
        if worker.group.rank != 0:  # a dense request on a run of several workers: one holds the context
            return ContextShard(num_layers(worker.model))
        ctx = torch.tensor(req.context_ids, dtype=torch.long, device=worker.device)
        return encode_dense(worker.model, ctx, cfg.prefill_layers)
