"""Phase 1: encode the context into this worker's KV shard (dense, star or ring).

Every worker calls ``encode_context`` with the whole context's token ids and works out, deterministically,
which tokens are its own; the result is the worker's ContextShard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .attention.hooks import attention_state
from .attention.prefill import CausalPrefill
from .attention.ring import RingPrefill, zigzag_positions
from .attention.star import StarBlocks
from .fused import compiled_layers
from .kv.anchor import SharedAnchor, anchor_shape
from .kv.shard import ContextShard
from .models.loader import num_layers


@dataclass(frozen=True)
class StarPlan:
    """How a context of ``length`` tokens is cut for star attention on ``world`` workers.

    block_size S, anchor A (<= S), and for each rank the (contiguous, in-order) block indices it encodes.
    """

    length: int
    block_size: int
    anchor: int
    blocks: tuple[tuple[int, ...], ...]

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.length / self.block_size)


def star_plan(length: int, block_size: int, anchor_block_size: int, world: int, num_blocks: int = 0) -> StarPlan:
    """block_size -1: ceil(length / world) (one block per worker); anchor -1: the block size.

    num_blocks > 0 instead cuts every context into that many blocks, block = ceil(length / num_blocks)
    (e.g. block = length / 4 at every evaluated length).

    Blocks go to workers in order, earlier workers taking the extra ones (as torch.tensor_split); a context
    with fewer blocks than workers leaves the last workers without context.
    """
    if num_blocks > 0:
        s = max(1, math.ceil(length / num_blocks))
    else:
        s = block_size if block_size > 0 else max(1, math.ceil(length / world))
    s = min(s, max(1, length))  # a block beyond the context is the context: same math, no padding
    a = min(anchor_block_size if anchor_block_size > 0 else s, s)
    nb = math.ceil(length / s)
    parts = torch.tensor_split(torch.arange(nb), world)  # fewer blocks than workers: trailing parts empty
    return StarPlan(length, s, a, tuple(tuple(int(b) for b in p) for p in parts))


def config_plan(cfg, length: int, world: int | None = None) -> StarPlan:
    """The star plan a run's settings give a context of ``length`` tokens (cfg: RunConfig) on ``world``
    workers (default: the run's worker count; a worker passes its group's size)."""
    return star_plan(length, cfg.block_size, cfg.anchor_block_size, world or cfg.world_size, cfg.num_blocks)


def _decoder(model):
    return model.get_decoder()


def _forward(model, ids: torch.Tensor, pos: torch.Tensor, prefill_layers: str = "auto") -> None:
    """Run the decoder stack only (no LM head): ids, pos (B, T). prefill_layers: --prefill_layers (auto compiles the
    decoder layers on CUDA, fused.compiled_layers)."""
    with compiled_layers(model, prefill_layers):
        _decoder(model)(input_ids=ids, position_ids=pos, use_cache=False)


@torch.inference_mode()
def encode_dense(model, ctx: torch.Tensor, prefill_layers: str = "auto") -> ContextShard:
    """Ordinary causal prefill of the whole context on one worker. ctx: (L,) long on the model device.
    prefill_layers: --prefill_layers (auto, compiled, eager), as for every encode_* below."""
    shard = ContextShard(num_layers(model))
    pos = torch.arange(ctx.numel(), device=ctx.device)
    with attention_state(CausalPrefill(shard)):
        _forward(model, ctx.unsqueeze(0), pos.unsqueeze(0), prefill_layers)
    return shard


@torch.inference_mode()
def encode_star(model, ctx: torch.Tensor, plan: StarPlan, group, pad_id: int = 0,
                max_batch_tokens: int = 0, prefill_layers: str = "auto") -> ContextShard:
    """Star phase 1 for this rank's blocks. ctx: (L,) long on the model device.

    The anchor (tokens [0, A)) is encoded once, by rank 0 (it holds block 0), and reaches the other ranks
    layer by layer (SharedAnchor) while they encode their own blocks; with A == S it also is block 0, so
    rank 0 does not encode block 0 a second time. A rank's blocks go in as one batch, or, with
    max_batch_tokens > 0 (memory for very long contexts), in as few batches as fit, in order; a shorter
    last block of the context runs as long as its tokens, on its own.
    """
    layers = num_layers(model)
    shard = ContextShard(layers)
    mine = list(plan.blocks[group.rank])
    s, a, length = plan.block_size, plan.anchor, plan.length
    dev = ctx.device
    anchor = None
    if plan.num_blocks > 1:  # some block sees the anchor
        anchor = SharedAnchor(group, layers, anchor_shape(model, a))
        if group.rank == 0:
            with attention_state(CausalPrefill(anchor)):
                _forward(model, ctx[:a].unsqueeze(0), torch.arange(a, device=dev).unsqueeze(0), prefill_layers)
            if a == s:  # block 0 is the anchor: its KV exists already
                for layer in range(layers):
                    shard.append(layer, *anchor.get(layer))
                mine = mine[1:]
        else:
            anchor.receive(model.dtype, group.device)
    # full blocks go in as batches of equal length; a shorter last block of the context goes in on its own,
    # as long as its tokens (no padding)
    full = [b for b in mine if (b + 1) * s <= length]
    batches = []
    per_batch = len(full) if max_batch_tokens <= 0 else max(1, max_batch_tokens // s)
    for i in range(0, len(full), max(1, per_batch)):
        batches.append((full[i:i + per_batch], s))
    if mine and mine[-1] not in full:
        batches.append(([mine[-1]], length - mine[-1] * s))
    for chunk, n in batches:
        blocks = torch.tensor(chunk, device=dev)
        block_ids = torch.cat([ctx[b * s:b * s + n] for b in chunk]).view(len(chunk), n)
        block_pos = blocks.unsqueeze(1) * s + torch.arange(n, device=dev).unsqueeze(0)
        sees = anchor if any(b != 0 for b in chunk) else None
        with attention_state(StarBlocks(shard, sees, blocks != 0, len(chunk) * n)):
            _forward(model, block_ids, block_pos, prefill_layers)
    if anchor is not None:
        anchor.finish()
    return shard


@torch.inference_mode()
def encode_ring(model, ctx: torch.Tensor, group, pad_id: int = 0, prefill_layers: str = "auto") -> ContextShard:
    """Exact causal ring attention over all workers (zigzag split). ctx: (L,)."""
    if group.world_size == 1:
        return encode_dense(model, ctx, prefill_layers)
    shard = ContextShard(num_layers(model))
    pos, c = zigzag_positions(ctx.numel(), group.world_size, group.rank)
    pos = pos.to(ctx.device)
    real = pos < ctx.numel()
    ids = torch.where(real, ctx[pos.clamp(max=ctx.numel() - 1)], torch.full_like(pos, pad_id))
    with attention_state(RingPrefill(group, shard, c, real)):
        _forward(model, ids.unsqueeze(0), pos.unsqueeze(0), prefill_layers)
    return shard


def encode_context(model, cfg, group, ctx: torch.Tensor, pad_id: int = 0) -> ContextShard:
    """Dispatch on cfg.attn_type (block mode lives in block_mode.py: its blocks come with the request)."""
    if cfg.attn_type == "dense":
        return encode_dense(model, ctx, cfg.prefill_layers)
    if cfg.attn_type == "star":
        plan = config_plan(cfg, ctx.numel(), group.world_size)
        return encode_star(model, ctx, plan, group, pad_id, cfg.max_batch_tokens, cfg.prefill_layers)
    if cfg.attn_type == "ring":
        return encode_ring(model, ctx, group, pad_id, cfg.prefill_layers)
    raise ValueError(f"unknown attention type {cfg.attn_type!r}")
