"""Star's anchor KV, encoded once for all workers and broadcast to them layer by layer.

The anchor (context tokens [0, A)) is the same prefix for every block, and causal: its KV does not depend on
the block after it. So rank 0, which holds block 0, encodes it once; each layer's K/V leaves for the other
ranks as soon as it exists (the next layer computes while it travels), and a receiving rank waits for layer l
only when its own blocks reach layer l. The receivers never run the anchor through the model.
"""

from __future__ import annotations

import torch

from ..models.loader import text_config


def anchor_shape(model, anchor: int) -> tuple[int, ...]:
    """Shape of one layer's stacked anchor K/V: (2, 1, H_kv, A, D)."""
    cfg = text_config(model.config)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return (2, 1, cfg.num_key_value_heads, anchor, head_dim)


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
