"""Hook stock transformers decoders: one registered attention function that defers to the current state.

Models run with ``attn_implementation="star_runtime"``, ``use_cache=False`` and explicit ``position_ids``.
Each decoder layer then hands us the query and the key/value of the *new* tokens only (after RoPE); the
runtime owns every stored KV. The active state (dense/star/ring phase 1, phase 2) decides what the new tokens
attend to and where their KV goes. No modeling code is copied.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch
from transformers import AttentionInterface

from ..progress import tick

ATTN_NAME = "star_runtime"
HOME_ATTR = "_star_runtime_home"


class AttentionState(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q: (B, Hq, T, D); k, v: (B, Hkv, T, D), post-RoPE. Returns (B, Hq, T, D) in q's dtype."""


_STATE: AttentionState | None = None


@contextlib.contextmanager
def attention_state(state: AttentionState):
    """Make ``state`` answer every attention call inside the block."""
    global _STATE
    prev, _STATE = _STATE, state
    try:
        yield state
    finally:
        _STATE = prev


@torch.compiler.disable  # compiled decoder layers (fused.compiled_layers) call it eagerly
def _runtime_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    if _STATE is None:
        raise RuntimeError(
            "star_runtime attention was called outside a runtime step; run the model through star_runtime"
        )
    tick()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    home = getattr(module, HOME_ATTR, None)
    if home is not None and query.device != home:  # a layer on another GPU of a split worker
        out = _STATE.attend(module.layer_idx, query.to(home), key.to(home), value.to(home), scale)
        return out.to(query.device).transpose(1, 2).contiguous(), None
    out = _STATE.attend(module.layer_idx, query, key, value, scale)
    return out.transpose(1, 2).contiguous(), None


def keep_attention_on(model, device: torch.device) -> None:
    """A model split over several GPUs: every layer's attention runs on ``device`` (the worker's group
    device), so all runtime KV, masks and collectives stay on one GPU; only the weights are spread."""
    for layer in model.get_decoder().layers:
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                setattr(m, HOME_ATTR, device)


def register() -> str:
    """Register the runtime attention with transformers (idempotent); returns its name."""
    AttentionInterface.register(ATTN_NAME, _runtime_attention)
    return ATTN_NAME


register()
