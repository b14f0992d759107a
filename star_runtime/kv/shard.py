"""What a worker stores: its share of the context KV, and (query host only) the query/generated KV.

Both hold post-RoPE keys and values per decoder layer, shaped (1, H_kv, T, D) in the model dtype.
"""

from __future__ import annotations

import torch


class ContextShard:
    """This worker's context KV after phase 1: per layer one (1, H_kv, T_shard, D) key and value tensor.

    A worker with no context (a short sample on many workers) keeps length 0; its partial attention in
    phase 2 has lse = -inf and weighs nothing in the merge.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self._parts: list[list] = [[] for _ in range(num_layers)]

    def set(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (1, H_kv, T, D)."""
        self.keys[layer] = k.contiguous()
        self.values[layer] = v.contiguous()

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add tokens (1, H_kv, T, D) after those already stored (phase 1 in several batches)."""
        self._parts[layer].append((k, v))

    def get(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self._parts[layer]:
            parts = ([(self.keys[layer], self.values[layer])] if self.keys[layer] is not None else []) \
                + self._parts[layer]
            self._parts[layer] = []
            if len(parts) == 1:
                self.set(layer, *parts[0])
            else:
                self.set(layer, torch.cat([k for k, _ in parts], dim=2), torch.cat([v for _, v in parts], dim=2))
        return self.keys[layer], self.values[layer]

    def __len__(self) -> int:
        k, _ = self.get(0)
        return 0 if k is None else k.shape[2]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


class QueryCache:
    """Static, preallocated KV of the query and generated tokens; only the query host has one.

    Per layer a (1, H_kv, capacity, D) buffer, allocated at the layer's first write; ``length`` tokens are
    valid. A forward writes its new tokens at [length, length + T) in every layer, then ``commit(T)``.
    """

    def __init__(self, num_layers: int, capacity: int):
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers
        self.capacity = capacity
        self.length = 0

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (1, H_kv, T, D) of the new tokens."""
        t = k.shape[2]
        if self.length + t > self.capacity:
            raise RuntimeError(f"query cache full: {self.length} + {t} > {self.capacity}")
        if self.k[layer] is None:
            # zeros, not empty: static decode reads every slot (masked), and 0 * NaN of stale memory is NaN
            shape = (1, k.shape[1], self.capacity, k.shape[3])
            self.k[layer] = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.v[layer] = torch.zeros(shape, dtype=v.dtype, device=v.device)
        self.k[layer][:, :, self.length : self.length + t] = k
        self.v[layer][:, :, self.length : self.length + t] = v

    def view(self, layer: int, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of tokens [0, upto): (1, H_kv, upto, D)."""
        return self.k[layer][:, :, :upto], self.v[layer][:, :, :upto]

    def commit(self, t: int) -> None:
        self.length += t

    # -- static decode (fixed shapes, device-side length: CUDA-graph friendly) ---------------------------
    def make_static(self) -> None:
        """From now on one token per step is written at the device-side index ``len_t``."""
        dev = self.k[0].device
        self.len_t = torch.tensor([self.length], dtype=torch.long, device=dev)
        self.slots = torch.arange(self.capacity, device=dev)

    def write_static(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (1, H_kv, 1, D) written at slot ``len_t``."""
        self.k[layer].index_copy_(2, self.len_t, k)
        self.v[layer].index_copy_(2, self.len_t, v)

    def valid_static(self) -> torch.Tensor:
        """(capacity,) bool: slots holding tokens, the one written this step included."""
        return self.slots <= self.len_t
