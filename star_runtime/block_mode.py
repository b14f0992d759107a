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
from .models.loader import num_layers


@dataclass(frozen=True)
class BlockSpec:
    """One block of a prompt: content key, token ids, offset (first position) and the worker encoding it."""

    key: str
    ids: tuple[int, ...]
    offset: int
    rank: int



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
    state = CollectPrefill(num_layers(model))
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
    shard = ContextShard(num_layers(model))
    mine = [b for b in blocks if b.rank == rank]
    if not mine:
        return shard
    device = store.device
    found = {b.key: store.get(b.key, len(b.ids)) for b in mine}
    missing = list({b.key: b for b in mine if found[b.key] is None}.values())
    if missing:
        for b, (kv, freq) in zip(missing, encode_new_blocks(model, missing, reencoder, device, pad_id)):
            store.put(b.key, kv, freq)
            found[b.key] = (kv, freq.cpu())
    # Cached blocks stay at positions 0..L-1; the shard gets fresh copies: values concatenated, keys
    # concatenated then rotated to their offsets (every layer at once).
    keys = torch.cat([found[b.key][0][:, 0] for b in mine], dim=2)  # (layers, H_kv, L_mine, D)
    values = torch.cat([found[b.key][0][:, 1] for b in mine], dim=2)
    delta = _delta_angles(mine, found, reencoder, reencoder.inv_freq(total_len), device)
    keys = reencoder.apply(keys, *reencoder.rotation(delta, device))
    for layer in range(keys.shape[0]):
        shard.set(layer, keys[layer].unsqueeze(0), values[layer].unsqueeze(0))
    return shard


def _delta_angles(mine: list[BlockSpec], found: dict, reencoder: RopeReencoder, dst_freq, device):
    """(L_mine, D/2) angles from each block's stored positions/frequencies to its offset in the prompt.

    Positions are built on the CPU and moved once; blocks encoded with the same frequencies (every RoPE type
    but the dynamic ones) share one computation.
    """
    src = torch.cat([torch.arange(len(b.ids)) for b in mine]).to(device, non_blocking=True)
    dst = torch.cat([torch.arange(b.offset, b.offset + len(b.ids)) for b in mine]).to(device, non_blocking=True)
    freqs = [found[b.key][1] for b in mine]
    if all(torch.equal(f, freqs[0]) for f in freqs[1:]):
        return reencoder.delta(src, freqs[0], dst, dst_freq)
    src_freq = torch.cat([f.expand(len(b.ids), -1) for b, f in zip(mine, freqs)]).to(device)
    return (reencoder.angles(dst, dst_freq).double()
            - (src.float()[:, None] * src_freq.float()).double())
