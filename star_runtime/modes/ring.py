"""Ring: exact causal attention over all workers for phase 1, zigzag split for load balance, communication
overlapped.

The context is padded to 2*W equal chunks of c tokens; worker r holds chunks r and 2W-1-r (so every worker
has the same amount of causal work). Per layer, each worker's K/V travel once around the ring; at step s a
worker holds the K/V of worker src = (r - s) mod W and computes:

* s = 0 (its own K/V): square causal over its 2c tokens (chunk r precedes chunk 2W-1-r);
* src < r: all its queries see the first chunk of src (earlier), none its second (later);
* src > r: only its second chunk of queries sees src's K/V, all of it.

The next K/V transfer is started before the step's attention, so the two overlap. Partials are merged
online in fp32 (attention/merge.py). Phase 2 is the common exact merge over every worker's shard.
"""

from __future__ import annotations

import math

import torch

from ..attention.hooks import attention_state
from ..attention.merge import OnlineMerge
from ..attention.partial import partial_attention
from ..kv.shard import ContextShard
from ..models.loader import num_layers
from .base import Mode, run_decoder
from .dense import encode_dense


def zigzag_positions(length: int, world: int, rank: int) -> tuple[torch.Tensor, int]:
    """Global positions held by ``rank``: (2c,) long tensor [chunk r ; chunk 2W-1-r], and c.

    Positions >= length are padding (at the very end of the context, so no real token ever sees them).
    """
    c = max(1, math.ceil(length / (2 * world)))
    first = torch.arange(rank * c, (rank + 1) * c)
    j = 2 * world - 1 - rank
    second = torch.arange(j * c, (j + 1) * c)
    return torch.cat((first, second)), c


class RingPrefill:
    """Attention state for a ring phase-1 forward of this worker's zigzag tokens.

    q: (1, Hq, 2c, D); k, v: (1, Hkv, 2c, D). ``real`` is a (2c,) bool mask of non-padding tokens, whose
    K/V is stored in ``shard`` for phase 2.
    """

    def __init__(self, group, shard: ContextShard, chunk: int, real: torch.Tensor):
        self.group = group
        self.shard = shard
        self.c = chunk
        self.real = real
        self._all_real = bool(real.all())

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        g, c = self.group, self.c
        kv = torch.stack((k, v)).contiguous()  # (2, 1, Hkv, 2c, D): one message per step
        acc = OnlineMerge()
        for step in range(g.world_size):
            pending = None
            if step + 1 < g.world_size:
                incoming = torch.empty_like(kv)
                pending = g.ring_exchange(kv, incoming)
            src = (g.rank - step) % g.world_size
            ks, vs = kv[0], kv[1]
            if step == 0:
                acc.add(*partial_attention(q, ks, vs, scale, causal=True))
            elif src < g.rank:
                acc.add(*partial_attention(q, ks[:, :, :c], vs[:, :, :c], scale))
            else:
                acc.add(*partial_attention(q[:, :, c:], ks, vs, scale), q_slice=slice(c, 2 * c))
            if pending is not None:
                for work in pending:
                    work.wait()
                kv = incoming
        if self._all_real:
            self.shard.set(layer, k, v)
        else:
            self.shard.set(layer, k[:, :, self.real], v[:, :, self.real])
        return acc.out.to(q.dtype)


@torch.inference_mode()
def encode_ring(model, ctx: torch.Tensor, group, pad_id: int = 0, prefill_layers: str = "auto") -> ContextShard:
    """Exact causal ring attention over all workers (zigzag split). ctx: (L,) long on the model device."""
    if group.world_size == 1:
        return encode_dense(model, ctx, prefill_layers)
    shard = ContextShard(num_layers(model))
    pos, c = zigzag_positions(ctx.numel(), group.world_size, group.rank)
    pos = pos.to(ctx.device)
    real = pos < ctx.numel()
    ids = torch.where(real, ctx[pos.clamp(max=ctx.numel() - 1)], torch.full_like(pos, pad_id))
    with attention_state(RingPrefill(group, shard, c, real)):
        run_decoder(model, ids.unsqueeze(0), pos.unsqueeze(0), prefill_layers)
    return shard


class RingMode(Mode):
    name = "ring"

    def encode(self, worker, req, cfg):
        ctx = torch.tensor(req.context_ids, dtype=torch.long, device=worker.device)
        return encode_ring(worker.model, ctx, worker.group, worker.pad_id, cfg.prefill_layers)
