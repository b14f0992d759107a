"""A decode step with fixed shapes for a fixed batch, run eagerly or replayed from a CUDA graph.

Every sample of the batch adds one token per step (finished samples keep running as passengers whose tokens
are ignored, so shapes never change). Inputs, positions and each query-host cache length live in device
buffers, the step writes the new KV at the device-side slot and attends to the valid slots, so one captured
graph replays every step: the whole forward, the per-layer all-gather included, is one launch.
"""

from __future__ import annotations

import torch

from .attention.hooks import attention_state
from .attention.phase2 import GlobalAttention
from .kv.shard import ContextShard, QueryCache

DYNAMIC_ROPE = ("dynamic", "longrope")


def graph_capturable(model) -> bool:
    """Dynamic RoPE types choose their frequencies on the host from the positions: not capturable."""
    rotary = getattr(model.get_decoder(), "rotary_emb", None)
    return getattr(rotary, "rope_type", "default") not in DYNAMIC_ROPE


class DecodeStep:
    """tokens (A,) -> next-token logits (A, V) for the A samples, positions advancing by one per call.

    shards: each sample's context shard; caches: each sample's query/generated KV (query host) or None.
    """

    def __init__(self, model, group, shards: list[ContextShard], caches: list[QueryCache] | None,
                 tokens: list[int], positions: list[int], use_graph: bool):
        dev = group.device
        self.model = model
        self.caches = caches
        if caches is not None:
            for c in caches:
                c.make_static()
        self.ids = torch.tensor(tokens, dtype=torch.long, device=dev).view(-1, 1)
        self.pos = torch.tensor(positions, dtype=torch.long, device=dev).view(-1, 1)
        self.state = GlobalAttention(group, shards, caches, static=True)
        self.graph = None
        if use_graph:
            self._capture()

    def _forward(self) -> torch.Tensor:
        with attention_state(self.state):
            logits = self.model(input_ids=self.ids, position_ids=self.pos, use_cache=False,
                                logits_to_keep=1).logits[:, -1]
        if self.caches is not None:
            for c in self.caches:
                c.len_t += 1
        self.pos += 1
        return logits

    def _capture(self) -> None:
        saved_pos = self.pos.clone()
        saved_len = [c.len_t.clone() for c in self.caches] if self.caches is not None else []
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
        for c, n in zip(self.caches or [], lens):
            c.len_t.copy_(n)

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
