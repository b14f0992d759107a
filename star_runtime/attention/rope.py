"""RoPE re-encoding (the second exact trick): move cached keys to new positions by one more rotation.

transformers rotates each pair (i, i + d/2) of a key at position p by the angle ``a = fp32(p * f_i)`` (f the
model's inverse frequencies, computed by its own rotary module: default, linear, dynamic, yarn, llama3,
longrope all live there) and multiplies cos/sin by ``attention_scaling`` (yarn's mscale). Rotations compose,
so a key stored at position p becomes the key at position p' by rotating it by ``a' - a``. We compute both
angles exactly as transformers does (fp32 products), subtract them in fp64 and rotate in fp32, so the
result matches a key computed at p' to fp32 rounding. The scaling factor is *not* applied again: the stored
key carries it once already. Keys are stored back in the cache dtype.
"""

from __future__ import annotations

import torch

from ..fused import fused

_DYNAMIC_TYPES = ("dynamic", "longrope")


class RopeReencoder:
    """Re-encodes keys of one model. Shapes: keys (..., L, D), positions (L,) long."""

    def __init__(self, model):
        rotary = getattr(model.get_decoder(), "rotary_emb", None)
        if rotary is None or not hasattr(rotary, "inv_freq"):
            raise ValueError(f"{type(model).__name__}: block mode needs a model with one rotary embedding module")
        if isinstance(getattr(rotary, "rope_type", "default"), dict):
            raise ValueError(f"{type(model).__name__}: per-layer-type RoPE is not supported in block mode")
        self.rotary = rotary
        self.rope_type = getattr(rotary, "rope_type", "default")

    @property
    def rotary_dim(self) -> int:
        return 2 * self.rotary.inv_freq.numel()

    def inv_freq(self, seq_len: int) -> torch.Tensor:
        """The model's inverse frequencies (D/2,) fp32 for a forward whose last position is seq_len - 1.

        Constant for every RoPE type but the dynamic ones, which the rotary module recomputes per forward.
        """
        if self.rope_type in _DYNAMIC_TYPES:
            buf = self.rotary.inv_freq
            x = torch.zeros(1, device=buf.device, dtype=torch.float32)
            self.rotary(x, torch.tensor([[seq_len - 1]], device=buf.device))
        return self.rotary.inv_freq.detach().float().clone()

    @staticmethod
    def angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
        """(L,) positions -> (L, D/2) fp32 angles, computed as transformers computes them."""
        return positions.to(inv_freq.device).float()[:, None] * inv_freq.float()[None, :]

    def rotation(self, delta_angles: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token angles (L, D/2) -> (cos, sin), each (L, rotary_dim) fp32 on ``device``.

        cos/sin are taken in fp64 so the angle difference loses nothing before it is rounded once.
        """
        d = delta_angles.to(device=device, dtype=torch.float64)
        cos, sin = torch.cos(d).float(), torch.sin(d).float()
        return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)

    def apply(self, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Keys (..., L, D) rotated by a rotation from ``rotation``, as a new tensor in the keys' dtype.

        On CUDA the rotation is one fused kernel (torch.compile) reading the keys once and writing once.
        """
        r = self.rotary_dim
        if r == keys.shape[-1]:
            return _rotate(keys, cos, sin)
        return torch.cat((_rotate(keys[..., :r], cos, sin), keys[..., r:]), dim=-1)

    def apply_(self, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """In-place form of ``apply``; returns keys."""
        keys.copy_(self.apply(keys, cos, sin))
        return keys

    def delta(self, src_pos, src_freq, dst_pos, dst_freq) -> torch.Tensor:
        """(L, D/2) fp64 angle from src (positions, frequencies) to dst, each angle as transformers rounds it."""
        dev = dst_freq.device
        return (self.angles(dst_pos.to(dev), dst_freq).double()
                - self.angles(src_pos.to(dev), src_freq.to(dev)).double())

    def reencode_(self, keys: torch.Tensor, src_pos: torch.Tensor, src_freq: torch.Tensor,
                  dst_pos: torch.Tensor, dst_freq: torch.Tensor) -> torch.Tensor:
        """Keys (..., L, D) encoded at src_pos with src_freq become keys at dst_pos with dst_freq (in place)."""
        cos, sin = self.rotation(self.delta(src_pos, src_freq, dst_pos, dst_freq), keys.device)
        return self.apply_(keys, cos, sin)


@fused
def _rotate(k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """k (..., L, r) rotated pairwise (i, i + r/2) by cos/sin (L, r) in fp32; returns k's dtype."""
    kf = k.float()
    half = kf.shape[-1] // 2
    rot = torch.cat((-kf[..., half:], kf[..., :half]), dim=-1)
    return (kf * cos + rot * sin).to(k.dtype)
