"""What a worker stores after phase 1: its share of the context KV (post-RoPE keys and values per decoder
layer, (1, H_kv, T, D) in the model dtype). The query host's own KV of query and generated tokens is phase 2's
(decode.py QueryCache)."""

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
        self.rows: torch.Tensor | None = None  # (layers, 2, C, H_kv, D) when the KV lives in a token-major buffer
        self._length_t, self._length_n = None, -1
        self._row_len = 0
        self.pending = None  # what still fills rows (a deferred gather); run by settle() before the KV is read
        self.blocks = None  # meanwhile, where the KV lies: (entries, offsets, inv_freq) (attention/pages.py)
        self.device_work = True  # whether making it queued work on the device (phase 1's timing waits for that)

    @classmethod
    def in_rows(cls, rows: torch.Tensor, length: int, pending=None, blocks=None) -> "ContextShard":
        """A shard whose KV is the first ``length`` tokens of a token-major buffer rows (layers, 2, C, H_kv, D)
        (written in place, e.g. by kv/gather.py); get() returns (1, H_kv, length, D) views of it, no copy.
        pending: a callable that writes those rows later (the first token can be computed from ``blocks``, the
        cached entries where they lie, before it runs); settle() or the first get() runs it."""
        shard = cls(rows.shape[0])
        # the per-layer views are made when first asked for (get): made here, 320 view ops of a 32-layer model
        # cost phase 1 ~0.3 ms of host time
        shard.rows, shard._row_len = rows, length
        shard.pending, shard.blocks = pending, blocks
        return shard

    def length_t(self) -> torch.Tensor:
        """(1,) int32 on the rows' device: the shard's length, made once (decode steps read it every layer)."""
        n = len(self)
        if self._length_n != n:
            self._length_t, self._length_n = torch.tensor([n], dtype=torch.int32, device=self.rows.device), n
        return self._length_t

    def set(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (1, H_kv, T, D)."""
        self.keys[layer] = k.contiguous()
        self.values[layer] = v.contiguous()

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add tokens (1, H_kv, T, D) after those already stored (phase 1 in several batches)."""
        self._parts[layer].append((k, v))

    def settle(self) -> None:
        """Write the rows a deferred gather still owes (nothing when there is none)."""
        if self.pending is not None:
            fill, self.pending, self.blocks = self.pending, None, None
            fill()

    def get(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.pending is not None:
            self.settle()
        if self.rows is not None and self.keys[layer] is None:
            n = self._row_len
            self.keys[layer] = self.rows[layer, 0, :n].transpose(0, 1).unsqueeze(0)
            self.values[layer] = self.rows[layer, 1, :n].transpose(0, 1).unsqueeze(0)
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
        if self.rows is not None:  # a view of the rows: its length is known before they are filled
            return self._row_len
        k, _ = self.get(0)
        return 0 if k is None else k.shape[2]
