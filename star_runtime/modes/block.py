"""Block-Attention: every block of a prompt but the last (system text, retrieved passages) is encoded on its
own at positions 0..L-1, so its KV depends only on its own tokens: it is cached by content and reused in any
later prompt at any offset, after one exact RoPE rotation to that offset (attention/rope.py). The final block
(the question, plus any blocks folded into it) attends to everything in phase 2, the common exact merge.

Engine side: a prompt becomes blocks with offsets, content keys and workers (BlockPlacement: a block some
worker already encoded goes back to it). Worker side: a worker looks its blocks up in its BlockStore
(kv/block_store.py), encodes the misses in one batch (CollectPrefill), re-encodes all of them to their
offsets and concatenates them into its context shard.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict

import numpy as np
from dataclasses import dataclass

import torch

from ..attention.hooks import attention_state
from ..attention.pages import usable as pages_usable
from ..attention.partial import partial_attention
from ..attention.rope import RopeReencoder, frame_tag
from ..errors import ConfigError
from ..kv.block_store import BlockStore, block_key, gib
from ..kv.gather import gather_rotate
from ..kv.shard import ContextShard
from ..models.loader import head_dim, num_layers, text_config
from ..progress import tick
from ..prompts import TokenCache, chat_template_parts, split_blocks, tokenize_blocks
from .base import Mode, Prompt


@dataclass(frozen=True)
class BlockSpec:
    """One block of a prompt: content key, token ids, offset (first position) and the worker encoding it."""

    key: str
    ids: tuple[int, ...]
    offset: int
    rank: int



class BlockPlacement:
    """Cache-aware placement (engine side): a block some worker already encoded goes back to it; a new block
    goes to the worker with the fewest tokens of this prompt so far. Remembers up to a million blocks."""

    def __init__(self, model_id: str, window: int, model_config):
        self.model_id = model_id
        self.window = window
        self.model_config = model_config
        self.lock = threading.Lock()  # a server places in its request threads and forgets in its scheduler
        self.home: OrderedDict[str, int] = OrderedDict()  # block key -> worker that encoded it
        self.tokens = TokenCache()  # block text -> ids: a passage seen before is not tokenized again
        # (tag, block text) -> its key: a recurring passage is not hashed again (~20 us of a request's
        # preparation a passage). The text's ids are a function of the text (TokenCache), so is the key.
        self.keys: OrderedDict[tuple[str, str], str] = OrderedDict()

    def place(self, blocks: list[list[int]], world: int, tag: str = "", texts: list[str] | None = None
              ) -> list[BlockSpec]:
        """tag: what of the prompt changes a block's KV besides its tokens (attention/rope.py frame_tag).
        texts: the blocks' texts (their ids tokenized by this placement's TokenCache), to remember keys by."""
        with self.lock:
            return self._place(blocks, world, tag, texts)

    def _key(self, ids: list[int], tag: str, text: str | None) -> str:
        if text is None:
            return block_key(self.model_id + tag, ids)
        key = self.keys.get((tag, text))
        if key is None:
            key = self.keys[(tag, text)] = block_key(self.model_id + tag, ids)
            while len(self.keys) > 200_000:
                self.keys.popitem(last=False)
        else:
            self.keys.move_to_end((tag, text))
        return key

    def _place(self, blocks: list[list[int]], world: int, tag: str, texts: list[str] | None = None
               ) -> list[BlockSpec]:
        load = [0] * world
        specs, offset = [], 0
        for i, ids in enumerate(blocks):
            key = self._key(ids, tag, texts[i] if texts is not None else None)
            rank = self.home.get(key)
            if rank is None or rank >= world:
                rank = min(range(world), key=lambda r: (load[r], r))
                self.home[key] = rank
            else:
                self.home.move_to_end(key)
            load[rank] += len(ids)
            specs.append(BlockSpec(key, tuple(ids), offset, rank))
            offset += len(ids)
        while len(self.home) > 1_000_000:
            self.home.popitem(last=False)
        return specs

    def forget(self, keys) -> None:
        """Blocks their worker evicted: no longer a reason to send them back there."""
        with self.lock:
            for k in keys:
                self.home.pop(k, None)


class CollectPrefill:
    """A batch of independent sequences, each attending causally to itself; every layer's K/V is kept.

    q: (B, Hq, T, D); k, v: (B, Hkv, T, D). After the forward, ``kv[layer]`` is (2, B, Hkv, T, D).
    Right padding never reaches a real token (causal), so blocks of different lengths share one batch.
    """

    def __init__(self, num_layers: int):
        self.kv: list[torch.Tensor | None] = [None] * num_layers

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        out, _ = partial_attention(q, k, v, scale, causal=True)
        self.kv[layer] = torch.stack((k, v))
        return out.to(q.dtype)


@torch.inference_mode()
def encode_new_blocks(model, blocks: list[BlockSpec], reencoder: RopeReencoder, device, pad_id: int = 0,
                      frame_len: int | None = None):
    """Encode blocks alone at positions 0..L-1, as one right-padded batch. frame_len: the prompt's length, whose
    RoPE frequencies the forward runs with (attention/rope.py rope_frame; default the longest block).

    Returns per block (kv (layers, 2, H_kv, L, D), inv_freq (D/2,)).
    """
    longest = max(len(b.ids) for b in blocks)
    ids = torch.full((len(blocks), longest), pad_id, dtype=torch.long, device=device)
    for i, b in enumerate(blocks):
        ids[i, : len(b.ids)] = torch.tensor(b.ids, dtype=torch.long, device=device)
    pos = torch.arange(longest, device=device).unsqueeze(0).expand(len(blocks), -1)
    inv_freq = reencoder.inv_freq(frame_len or longest)
    state = CollectPrefill(num_layers(model))
    with attention_state(state):
        model.get_decoder()(input_ids=ids, position_ids=pos, use_cache=False)
    kv = torch.stack(state.kv)  # (layers, 2, B, H_kv, longest, D)
    return [(kv[:, :, i, :, : len(b.ids)].contiguous(), inv_freq) for i, b in enumerate(blocks)]


@torch.inference_mode()
def encode_blocks(model, blocks: list[BlockSpec], rank: int, store: BlockStore, reencoder: RopeReencoder,
                  total_len: int, pad_id: int = 0, rows: torch.Tensor | None = None, defer: bool = False
                  ) -> ContextShard:
    """This worker's blocks -> its context shard, keys re-encoded to the blocks' offsets.

    total_len: the prompt's full length (context + final block), for RoPE types whose frequencies depend on
    the sequence length (dynamic); a constant for the others. rows: a token-major buffer (layers, 2, C, H_kv, D)
    to assemble the shard in (phase 2's Arena, so nothing is copied again), else one is made. defer (with
    rows): where the query can attend the cached entries in place (attention/pages.py usable; every block
    encoded with the prompt's frequencies), the shard names them (``blocks``) and gathers into rows only when
    settled -- after the first token, so the gather is off the time to it.
    """
    mine = [b for b in blocks if b.rank == rank]
    if not mine:
        return ContextShard(num_layers(model))
    device = store.device
    found = {}
    device_hits = store.stats.hits["device"]
    for b in mine:  # a block twice in one prompt is looked up once
        if b.key not in found:
            found[b.key] = store.get(b.key, len(b.ids))
            tick()  # a disk hit reads and checks a whole entry: progress for the liveness watch
        else:
            store.stats.repeat_tokens += len(b.ids)
    missing = list({b.key: b for b in mine if found[b.key] is None}.values())
    if missing:
        on_cpu = {}  # the batch's blocks share one frequency tensor: one copy
        for b, (kv, freq) in zip(missing, encode_new_blocks(model, missing, reencoder, device, pad_id, total_len)):
            store.put(b.key, kv, freq)
            if id(freq) not in on_cpu:
                on_cpu[id(freq)] = freq.cpu()
            found[b.key] = (kv, on_cpu[id(freq)])
    entries = [found[b.key][0] for b in mine]
    length = sum(len(b.ids) for b in mine)
    dst_freq, dst_host = reencoder.inv_freq_pair(total_len)
    made = rows is None or rows.shape[2] < length
    if made:
        e = entries[0]
        rows = torch.empty((e.shape[0], 2, length, e.shape[2], e.shape[4]), dtype=e.dtype, device=device)

    def gather() -> None:
        # Cached blocks stay at positions 0..L-1; the rows get keys rotated to the blocks' offsets and values, in
        # one pass over the entries (kv/gather.py)
        layout = token_layout(mine, device)
        delta = _delta_angles(mine, found, reencoder, dst_freq, layout).to(device, torch.float64)
        cos, sin = torch.cos(delta).float(), torch.sin(delta).float()  # (L_mine, R/2)
        gather_rotate(entries, rows, cos, sin, layout[0], layout[1])

    # (the store keeps its entries contiguous, and fresh encodings are; the page table checks each entry's
    # layout as it names its pages, so a prompt's dozens of passages are not checked twice)
    if (defer and not made and entries[0].dtype == rows.dtype
            and pages_usable(rows.dtype, device, rows.shape[4], reencoder.rotary_dim)
            and _same_freq([found[b.key][1] for b in mine], dst_host)):
        shard = ContextShard.in_rows(rows, length, pending=gather,
                                     blocks=(entries, [b.offset for b in mine], dst_host))
        # every block a device-tier hit (a miss or a lower tier's hit is not), left where it lies: this phase 1
        # queued nothing on the device
        shard.device_work = store.stats.hits["device"] - device_hits != len(found)
        return shard
    gather()
    return ContextShard.in_rows(rows, length)


def _same_freq(freqs: list[torch.Tensor], dst: torch.Tensor) -> bool:
    """Whether every block was encoded with the prompt's own frequencies dst (on the host, as stored ones are;
    blocks encoded together share one tensor, compared once; a pair of tensors found equal is remembered --
    nobody writes into frequencies)."""
    for f in {id(f): f for f in freqs}.values():
        if f is dst or (f is _EQUAL[0] and dst is _EQUAL[1]):
            continue
        if not torch.equal(f.cpu(), dst):
            return False
        _EQUAL[:] = [f, dst]
    return True


_EQUAL: list = [None, None]  # the last pair of frequency tensors found equal


def _delta_angles(mine: list[BlockSpec], found: dict, reencoder: RopeReencoder, dst_freq, layout):
    """(L_mine, D/2) angles from each block's stored positions/frequencies to its offset in the prompt.

    layout: (tok_block, tok_local, dst_pos) per token on the device (TokenLayout); blocks encoded with the same
    frequencies (every RoPE type but the dynamic ones) share one computation.
    """
    _, src, dst = layout
    freqs = [found[b.key][1] for b in mine]
    if all(torch.equal(f, freqs[0]) for f in freqs[1:]):
        return reencoder.delta(src, freqs[0], dst, dst_freq)
    src_freq = torch.cat([f.expand(len(b.ids), -1) for b, f in zip(mine, freqs)]).to(dst.device)
    return (reencoder.angles(dst, dst_freq).double()
            - (src.float()[:, None] * src_freq.float()).double())


def token_layout(mine: list[BlockSpec], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per context token of this worker, on the device, from one host-to-device copy: its block's index among
    ``mine``, its position inside the block (where it was encoded) and its position in the prompt."""
    lens = np.array([len(b.ids) for b in mine], dtype=np.int64)
    starts = np.cumsum(lens) - lens
    block = np.repeat(np.arange(len(mine)), lens)
    local = np.arange(int(lens.sum())) - np.repeat(starts, lens)
    dst = np.repeat(np.array([b.offset for b in mine], dtype=np.int64), lens) + local
    packed = torch.from_numpy(np.stack([block, local, dst])).to(device)  # small: pinning would cost more
    return packed[0].to(torch.int32), packed[1], packed[2]


class BlockWorkerState:
    """A worker's block store and RoPE re-encoder (made at the worker's first block request)."""

    def __init__(self, worker):
        cfg, model = worker.cfg, worker.model
        disk = os.path.join(cfg.block_cache_disk_dir, f"rank{worker.group.rank}") if cfg.block_cache_disk_dir else None
        text = text_config(model.config)
        self.store = BlockStore(worker.device, gib(cfg.block_cache_gpu_gib), gib(cfg.block_cache_cpu_gib), disk,
                                gib(cfg.disk_budget_gib), dtype=model.dtype,
                                expect=(text.num_hidden_layers, text.num_key_value_heads, head_dim(model.config)))
        self.reencoder = RopeReencoder(model)

    def flush(self) -> None:
        self.store.flush()

    def close(self) -> None:
        self.store.close()


class BlockMode(Mode):
    name = "block"
    worker_state = BlockWorkerState

    def engine_state(self, cfg, model_id, window, model_config):
        return BlockPlacement(model_id, window, model_config)

    def prompt(self, tokenizer, cfg, context, query, where, blocks=None, state=None) -> Prompt:
        """Tokenize every block on its own, fold blocks past --num_local_attention_blocks into the final block,
        give each local block its offset, content key and worker."""
        texts = list(blocks) if blocks is not None else split_blocks(context, cfg.block_delimiter)
        if not texts:
            raise ConfigError(f"{where}: no blocks (the block list / input_context is empty); give at least one "
                              "passage")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ConfigError(f"{where}: block {i} is empty; drop it or give it text")
        if not query.strip():
            raise ConfigError(f"{where}: input_query is empty; give the question or instruction")
        ids, query_ids = tokenize_blocks(tokenizer, texts, query, cfg.chat_template, state.tokens)
        if len(ids) == len(texts) + 1:  # tokenize_blocks made the chat template's head the first block
            texts = [chat_template_parts(tokenizer)[0]] + texts
        for i, b in enumerate(ids):
            if len(b) > state.window:
                raise ConfigError(f"{where}: block {i} has {len(b)} tokens, beyond the model window of "
                                  f"{state.window}; split it into smaller passages")
        k = len(ids) if cfg.num_local_attention_blocks < 0 else cfg.num_local_attention_blocks
        local, folded = ids[:k], ids[k:]
        qry = list(itertools.chain.from_iterable(folded)) + query_ids
        ctx = list(itertools.chain.from_iterable(local))
        tag = frame_tag(state.model_config, len(ctx) + len(qry))
        return Prompt(ctx, qry, state.place(local, cfg.world_size, tag, texts[:len(local)]))

    def record(self, cfg, req, reply, world):
        return {"blocks": len(req.blocks), "block_cache": reply.cache}

    def settings(self, cfg):
        return {"block_delimiter": cfg.block_delimiter, "num_local_attention_blocks": cfg.num_local_attention_blocks}

    def encode(self, worker, req, cfg):
        st = worker.mode_state(self.name, self.worker_state)
        total = len(req.context_ids) + len(req.query_ids)
        return encode_blocks(worker.model, req.blocks, worker.group.rank, st.store, st.reencoder, total,
                             worker.pad_id, rows=worker.context_rows(req), defer=worker.defers_context())

    def counters(self, worker):
        s = worker.mode_state(self.name, BlockWorkerState).store.stats
        return {"hits": sum(s.hits.values()), "misses": s.misses, "hit_tokens": s.hit_tokens,
                "miss_tokens": s.miss_tokens, "repeat_tokens": s.repeat_tokens, "evictions": sum(s.evictions.values())}
