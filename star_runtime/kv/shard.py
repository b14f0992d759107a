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


class BatchedDecodeKV:
    """Static decode KV of A samples in one padded buffer per layer, so a decode step attends for the whole
    batch with one kernel sequence instead of one per sample.

    Per layer k, v: (A, H_kv, Lc + Cq, D): sample a's context shard at [0, L_a), its query/generated tokens
    (query host only) at [Lc, Lc + len_a); Lc = the longest shard, Cq = the largest query-cache capacity
    (0 off the host). ``valid()`` (A, Lc + Cq) marks the slots that hold tokens, the one written this step
    included; ``len_t`` (A,) on the device is each sample's own-token count. The context KV of the batch is
    copied once for the decode (``nbytes`` tells how much).
    """

    def __init__(self, shards: list[ContextShard], caches: list[QueryCache] | None):
        ref = _reference_tensor(shards, caches)
        dev, dt, hkv, d = ref.device, ref.dtype, ref.shape[1], ref.shape[3]
        lens = [len(sh) for sh in shards]
        self.lc = max(lens)
        cq = max(c.capacity for c in caches) if caches else 0
        a = len(shards)
        self.k, self.v = [], []
        for layer in range(len(shards[0].keys)):
            k = torch.zeros((a, hkv, self.lc + cq, d), dtype=dt, device=dev)
            v = torch.zeros_like(k)
            for i, sh in enumerate(shards):
                if lens[i]:
                    sk, sv = sh.get(layer)
                    k[i, :, : lens[i]] = sk[0]
                    v[i, :, : lens[i]] = sv[0]
                if caches:
                    c = caches[i]
                    k[i, :, self.lc : self.lc + c.length] = c.k[layer][0, :, : c.length]
                    v[i, :, self.lc : self.lc + c.length] = c.v[layer][0, :, : c.length]
            self.k.append(k)
            self.v.append(v)
        slots = torch.arange(self.lc + cq, device=dev)
        self.ctx_valid = slots < torch.tensor(lens, device=dev).unsqueeze(1)  # (A, Lc + Cq)
        self.own_slots = slots - self.lc  # a slot's index among the own tokens; negative over the context
        self.has_own = caches is not None
        self.len_t = torch.tensor([c.length for c in caches] if caches else [0] * a, dtype=torch.long, device=dev)
        self.rows = torch.arange(a, device=dev)

    @staticmethod
    def nbytes(shards: list[ContextShard], caches: list[QueryCache] | None) -> int:
        """Bytes of the padded copy; 0 when there is nothing to attend to (no context, no own tokens)."""
        ref = _reference_tensor(shards, caches)
        if ref is None:
            return 0
        lc = max(len(sh) for sh in shards)
        cq = max(c.capacity for c in caches) if caches else 0
        per_token = 2 * len(shards[0].keys) * ref.shape[1] * ref.shape[3] * ref.element_size()
        return len(shards) * (lc + cq) * per_token

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (A, H_kv, 1, D), each sample's new token, written at its own slot Lc + len_t."""
        idx = self.lc + self.len_t
        self.k[layer][self.rows, :, idx] = k[:, :, 0]
        self.v[layer][self.rows, :, idx] = v[:, :, 0]

    def valid(self) -> torch.Tensor:
        """(A, Lc + Cq) bool."""
        if not self.has_own:
            return self.ctx_valid
        own = (self.own_slots >= 0) & (self.own_slots.unsqueeze(0) <= self.len_t.unsqueeze(1))
        return self.ctx_valid | own


def _reference_tensor(shards: list[ContextShard], caches: list[QueryCache] | None) -> torch.Tensor | None:
    """Any stored key tensor (device, dtype, heads, head dim), or None if the batch holds none."""
    for c in caches or []:
        if c.k[0] is not None:
            return c.k[0]
    for sh in shards:
        if len(sh):
            return sh.get(0)[0]
    return None
