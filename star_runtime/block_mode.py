"""Block-Attention phase 1: each passage block is encoded on its own (positions from 0), its KV cached and
reused by content, and re-encoded to the block's offset in the prompt when used.

The engine lays out a prompt as blocks with offsets and assigns each block to a worker (cache-aware: a
block already held by a worker goes back to it). A worker looks its blocks up in its BlockStore, encodes
the misses in one batch, re-encodes all of them to their offsets and concatenates them into its context
shard. Phase 2 is unchanged: the last block (the question, plus any blocks folded into it) attends to
everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention.hooks import attention_state
from .attention.prefill import CollectPrefill
from .attention.rope import RopeReencoder
from .kv.block_store import BlockStore
from .kv.shard import ContextShard


@dataclass(frozen=True)
class BlockSpec:
    """One block of a prompt: content key, token ids, offset (first position) and the worker encoding it."""

    key: str
    ids: tuple[int, ...]
    offset: int
    rank: int


def _num_layers(model) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return cfg.num_hidden_layers


@torch.inference_mode()
def encode_new_blocks(model, blocks: list[BlockSpec], reencoder: RopeReencoder, device, pad_id: int = 0):
    """Encode blocks alone at positions 0..L-1, as one right-padded batch.

    Returns per block (kv (layers, 2, H_kv, L, D), inv_freq (D/2,)).
    """
    longest = max(len(b.ids) for b in blocks)
    ids = torch.full((len(blocks), longest), pad_id, dtype=torch.long, device=device)
    for i, b in enumerate(blocks):
        ids[i, : len(b.ids)] = torch.tensor(b.ids, dtype=torch.long, device=device)
    pos = torch.arange(longest, device=device).unsqueeze(0).expand(len(blocks), -1)
    inv_freq = reencoder.inv_freq(longest)
    state = CollectPrefill(_num_layers(model))
    with attention_state(state):
        model.get_decoder()(input_ids=ids, position_ids=pos, use_cache=False)
    kv = torch.stack(state.kv)  # (layers, 2, B, H_kv, longest, D)
    return [(kv[:, :, i, :, : len(b.ids)].clone(), inv_freq) for i, b in enumerate(blocks)]


@torch.inference_mode()
def encode_blocks(model, blocks: list[BlockSpec], rank: int, store: BlockStore, reencoder: RopeReencoder,
                  total_len: int, pad_id: int = 0) -> ContextShard:
    """This worker's blocks -> its context shard, keys re-encoded to the blocks' offsets.

    total_len: the prompt's full length (context + final block), for RoPE types whose frequencies depend on
    the sequence length (dynamic); a constant for the others.
    """
    shard = ContextShard(_num_layers(model))
    mine = [b for b in blocks if b.rank == rank]
    if not mine:
        return shard
    device = store.device
    found = {b.key: store.get(b.key, len(b.ids)) for b in mine}
    missing = list({b.key: b for b in mine if found[b.key] is None}.values())
    if missing:
        for b, (kv, freq) in zip(missing, encode_new_blocks(model, missing, reencoder, device, pad_id)):
            store.put(b.key, kv, freq)
            found[b.key] = (kv, freq)
    kv = torch.cat([found[b.key][0] for b in mine], dim=3)  # (layers, 2, H_kv, L_mine, D): a fresh copy
    dst_freq = reencoder.inv_freq(total_len)
    delta = torch.cat([
        reencoder.delta(torch.arange(len(b.ids), device=device), found[b.key][1],
                        torch.arange(b.offset, b.offset + len(b.ids), device=device), dst_freq)
        for b in mine
    ])
    cos, sin = reencoder.rotation(delta, device)
    for layer in range(kv.shape[0]):
        reencoder.apply_(kv[layer, 0], cos, sin)
        shard.set(layer, kv[layer, 0].unsqueeze(0), kv[layer, 1].unsqueeze(0))
    return shard
