"""A decode step with fixed shapes for a fixed batch, run eagerly or replayed from a CUDA graph.

Every sample of the batch adds one token per step (finished samples keep running as passengers whose tokens
are ignored, so shapes never change). Inputs, positions and each query-host cache length live in device
buffers, the step writes the new KV at the device-side slot and attends to the valid slots, so one captured
graph replays every step: the whole forward, the per-layer all-gather included, is one launch.
"""

from __future__ import annotations

import torch

from .attention.hooks import attention_state
from .attention.phase2 import BatchedGlobalAttention, GlobalAttention
from .kv.shard import BatchedDecodeKV, ContextShard, QueryCache

DYNAMIC_ROPE = ("dynamic", "longrope")


def graph_capturable(model) -> bool:
    """Dynamic RoPE types choose their frequencies on the host from the positions: not capturable."""
    rotary = getattr(model.get_decoder(), "rotary_emb", None)
    return getattr(rotary, "rope_type", "default") not in DYNAMIC_ROPE


def use_batched_kv(shards: list[ContextShard], caches: list[QueryCache] | None, device: torch.device) -> bool:
    """Several samples: decode over one padded copy of their KV (BatchedDecodeKV) when it fits in half the
    free device memory; otherwise, or for one sample, attend per sample (same math, more launches)."""
    if len(shards) < 2:
        return False
    need = BatchedDecodeKV.nbytes(shards, caches)
    if need == 0:
        return False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return need <= free // 2
    return True


class DecodeStep:
    """tokens (A,) -> next-token logits (A, V) for the A samples, positions advancing by one per call.

    shards: each sample's context shard; caches: each sample's query/generated KV (query host) or None.
    Several samples attend together over a padded copy of their KV (one kernel sequence per layer for the
    batch) when it fits (use_batched_kv), else sample by sample.
    """

    def __init__(self, model, group, shards: list[ContextShard], caches: list[QueryCache] | None,
                 tokens: list[int], positions: list[int], use_graph: bool):
        dev = group.device
        self.model = model
        self.caches = caches
        self.ids = torch.tensor(tokens, dtype=torch.long, device=dev).view(-1, 1)
        self.pos = torch.tensor(positions, dtype=torch.long, device=dev).view(-1, 1)
        if use_batched_kv(shards, caches, dev):
            kv = BatchedDecodeKV(shards, caches)
            self.state = BatchedGlobalAttention(group, kv)
            self.counters = [kv.len_t]
        else:
            for c in caches or []:
                c.make_static()
            self.state = GlobalAttention(group, shards, caches, static=True)
            self.counters = [c.len_t for c in caches or []]
        self.graph = None
        if use_graph:
            self._capture()

    def _forward(self) -> torch.Tensor:
        with attention_state(self.state):
            logits = self.model(input_ids=self.ids, position_ids=self.pos, use_cache=False,
                                logits_to_keep=1).logits[:, -1]
        for n in self.counters:
            n += 1
        self.pos += 1
        return logits

    def _capture(self) -> None:
        saved_pos = self.pos.clone()
        saved_len = [n.clone() for n in self.counters]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: kernels chosen, fused ops compiled, communicators ready
            for _ in range(2):
                self._forward()
        torch.cuda.current_stream().wait_stream(side)
        self._restore(saved_pos, saved_len)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.logits = self._forward()
        self._restore(saved_pos, saved_len)  # capture records; make sure nothing moved

    def _restore(self, pos, lens) -> None:
        self.pos.copy_(pos)
        for n, saved in zip(self.counters, lens):
            n.copy_(saved)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (A,) long on the device, the previous step's tokens. Returns logits (A, V)."""
        self.ids.copy_(tokens.view(-1, 1))
        if self.graph is None:
            out = self._forward()
        else:
            self.graph.replay()
            out = self.logits
        if self.caches is not None:
            for c in self.caches:
                c.length += 1
        return out
