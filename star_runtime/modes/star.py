"""Star Attention: phase 1 encodes each context block against [anchor ; itself] on its own worker; phase 2
(the query and generated tokens over every worker's shard) is the common exact merge.

Layout: the context is cut into blocks of S tokens (the last may be shorter), given to workers in order; the
anchor is the first A <= S context tokens. Block 0 is ordinary causal attention; block i >= 1 attends to the
anchor and causally to itself, at its global positions. The anchor's KV is the same for every block (causal:
it never sees what follows), so rank 0 (which holds block 0) encodes it once and broadcasts each layer's K/V as
soon as it exists; the other ranks wait for layer l only when their own blocks reach it, and never run the
anchor through the model (SharedAnchor). A worker's blocks go through the model as one batch (StarBlocks):
each block's causal partial and its anchor partial are merged exactly (merge_two_like).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..attention.hooks import attention_state
from ..attention.merge import merge_two
from ..attention.partial import partial_attention
from ..fused import fused
from ..kv.shard import ContextShard
from ..models.loader import head_dim, num_layers, text_config
from .base import Mode, run_decoder
from .dense import CausalPrefill


# -- plan ---------------------------------------------------------------------------------------------------
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



# -- anchor ---------------------------------------------------------------------------------------------
def anchor_shape(model, anchor: int) -> tuple[int, ...]:
    """Shape of one layer's stacked anchor K/V: (2, 1, H_kv, A, D)."""
    cfg = text_config(model.config)
    return (2, 1, cfg.num_key_value_heads, anchor, head_dim(model.config))


class SharedAnchor:
    """Per layer the anchor's post-RoPE K and V, (1, H_kv, A, D) each, on every rank of ``group``.

    Rank ``src`` fills it through ``set`` (it is the store of the anchor's CausalPrefill); every other rank
    calls ``receive`` once, before its own blocks' forward. Every rank of the group takes part in the
    broadcasts, in layer order, also one without blocks. ``finish`` waits for every transfer.
    """

    def __init__(self, group, num_layers: int, shape: tuple[int, ...], src: int = 0):
        self.group = group
        self.src = src
        self.shape = tuple(shape)
        self.kv: list[torch.Tensor | None] = [None] * num_layers
        self.pending: list = [None] * num_layers

    def set(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Source rank: keep layer ``layer``'s K/V (1, H_kv, A, D) and start sending it."""
        kv = torch.stack((k, v))
        if kv.shape != self.shape:
            raise RuntimeError(f"anchor K/V of layer {layer} has shape {tuple(kv.shape)}, the receivers expect "
                               f"{self.shape}; this model's attention layout is not supported by star mode")
        self.kv[layer] = kv
        self.pending[layer] = self.group.broadcast_async(kv, self.src)  # a group of one sends nothing

    def receive(self, dtype: torch.dtype, device: torch.device) -> None:
        """Other ranks: post every layer's receive; ``get`` waits for one layer at a time."""
        for layer in range(len(self.kv)):
            buf = torch.empty(self.shape, dtype=dtype, device=device)
            self.kv[layer] = buf
            self.pending[layer] = self.group.broadcast_async(buf, self.src)

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, v) of ``layer``, each (1, H_kv, A, D); on a receiver, once that layer has arrived."""
        if self.group.rank != self.src and self.pending[layer] is not None:
            self.pending[layer].wait()
            self.pending[layer] = None
        kv = self.kv[layer]
        if kv is None:
            raise RuntimeError(f"anchor layer {layer} was read before it was encoded")
        return kv[0], kv[1]

    def finish(self) -> None:
        """Wait for every transfer still in flight (the source's tensors must outlive their sending)."""
        for layer, work in enumerate(self.pending):
            if work is not None:
                work.wait()
                self.pending[layer] = None


# -- phase 1 ------------------------------------------------------------------------------------------------
@fused
def merge_two_like(o1, l1, o2, l2) -> tuple[torch.Tensor, torch.Tensor]:
    """merge_two, computed in fp32 with the output in o1's dtype: out (B, H, T, D), lse (B, H, T) fp32."""
    out, lse = merge_two.__wrapped__(o1, l1, o2, l2)
    return out.to(o1.dtype), lse


class StarBlocks:
    """Attention state for one batched forward of a worker's blocks.

    q: (nb, Hq, S, D); k, v: (nb, Hkv, S, D) -- nb blocks of S tokens with global position ids.
    anchor: per-layer anchor KV (1, Hkv, A, D) through ``get(layer)`` (a SharedAnchor), or None when every
    block of the batch is block 0.
    sees_anchor: (nb,) bool, False for block 0. Every token is real (a short last block runs on its own).
    """

    def __init__(self, shard: ContextShard, anchor, sees_anchor: torch.Tensor):
        self.shard = shard
        self.anchor = anchor
        self.sees_anchor = sees_anchor

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
        self.shard.append(layer, k.transpose(0, 1).reshape(1, hkv, nb * s, d),
                          v.transpose(0, 1).reshape(1, hkv, nb * s, d))
        return out.to(q.dtype)


def start_anchor(model, ctx: torch.Tensor, plan: StarPlan, group, shard: ContextShard,
                 prefill_layers: str = "auto") -> tuple[SharedAnchor | None, list[int]]:
    """The anchor of a context of several blocks, on every rank: rank 0 encodes tokens [0, A) once and starts
    broadcasting each layer; the others post their receives. With A == S block 0 is the anchor: rank 0 puts
    its KV in ``shard`` and does not encode it again. Returns the anchor (None for one block: nothing sees it)
    and this rank's blocks still to encode."""
    mine = list(plan.blocks[group.rank])
    if plan.num_blocks <= 1:
        return None, mine
    layers, a = num_layers(model), plan.anchor
    anchor = SharedAnchor(group, layers, anchor_shape(model, a))
    if group.rank == 0:
        with attention_state(CausalPrefill(anchor)):
            run_decoder(model, ctx[:a].unsqueeze(0), torch.arange(a, device=ctx.device).unsqueeze(0), prefill_layers)
        if a == plan.block_size:  # block 0 is the anchor: its KV exists already
            for layer in range(layers):
                shard.append(layer, *anchor.get(layer))
            mine = mine[1:]
    else:
        anchor.receive(model.dtype, group.device)
    return anchor, mine


@torch.inference_mode()
def encode_star(model, ctx: torch.Tensor, plan: StarPlan, group, max_batch_tokens: int = 0,
                prefill_layers: str = "auto") -> ContextShard:
    """Star phase 1 for this rank's blocks. ctx: (L,) long on the model device.

    The anchor (tokens [0, A)) is encoded once, by rank 0 (it holds block 0), and reaches the other ranks
    layer by layer (SharedAnchor) while they encode their own blocks; with A == S it also is block 0, so
    rank 0 does not encode block 0 a second time. A rank's blocks go in as one batch, or, with
    max_batch_tokens > 0 (memory for very long contexts), in as few batches as fit, in order; a shorter
    last block of the context runs as long as its tokens, on its own.
    """
    layers = num_layers(model)
    shard = ContextShard(layers)
    s, length = plan.block_size, plan.length
    dev = ctx.device
    anchor, mine = start_anchor(model, ctx, plan, group, shard, prefill_layers)
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
        with attention_state(StarBlocks(shard, sees, blocks != 0)):
            run_decoder(model, block_ids, block_pos, prefill_layers)
    if anchor is not None:
        anchor.finish()
    return shard


class StarMode(Mode):
    name = "star"

    def encode(self, worker, req, cfg):
        ctx = torch.tensor(req.context_ids, dtype=torch.long, device=worker.device)
        plan = config_plan(cfg, ctx.numel(), worker.group.world_size)
        return encode_star(worker.model, ctx, plan, worker.group, cfg.max_batch_tokens, cfg.prefill_layers)

    def notice(self, cfg, req, world):
        plan = config_plan(cfg, len(req.context_ids), world)
        if world > 1 and plan.num_blocks < world:
            return (f"sample {req.index}: {len(req.context_ids)} context tokens make {plan.num_blocks} block(s) of "
                    f"{plan.block_size} for {world} workers; {world - plan.num_blocks} worker(s) hold no context "
                    "for it")
        return None

    def record(self, cfg, req, reply, world):
        return {"block_size": config_plan(cfg, len(req.context_ids), world).block_size}

    def settings(self, cfg):
        s = {"block_size": cfg.block_size, "anchor_block_size": cfg.anchor_block_size, "num_blocks": cfg.num_blocks}
        if cfg.block_size <= 0 and cfg.num_blocks <= 0:  # the block size follows the worker count
            s["num_workers"] = cfg.world_size
        return s

    def run_tag(self, cfg):
        """The reference's _b<block>a<anchor> (_<N>blocks with --num_blocks; _bauto_w<workers> when the block is
        context / workers)."""
        def short(n):
            return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)

        anchor = "" if cfg.anchor_block_size <= 0 else "a" + short(cfg.anchor_block_size)
        if cfg.num_blocks > 0:
            return f"_{cfg.num_blocks}blocks{anchor}"
        if cfg.block_size <= 0:
            return f"_bauto{anchor}_w{cfg.world_size}"
        return f"_b{short(cfg.block_size)}a{short(cfg.anchor_block_size if cfg.anchor_block_size > 0 else cfg.block_size)}"
