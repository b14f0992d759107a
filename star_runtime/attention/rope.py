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

import contextlib
import weakref

import torch

from ..fused import fused

DYNAMIC_TYPES = ("dynamic", "longrope")  # RoPE types whose frequencies follow the length (decode.graph_capturable too)


def rotary_of(model):
    """The decoder's rotary module, looked up once per model (get_decoder costs ~25 us in transformers 5, and
    every request asks)."""
    hit = _ROTARY.get(model)
    if hit is None:
        hit = _ROTARY[model] = (getattr(model.get_decoder(), "rotary_emb", None),)
    return hit[0]


_ROTARY: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def frame_inv_freq(rotary, seq_len: int) -> torch.Tensor:
    """(D/2,) fp32 inverse frequencies of one forward over a whole sequence of ``seq_len`` tokens, as a fresh
    model computes them: constant for every RoPE type but dynamic NTK (scaled past the window) and LongRoPE
    (long factors past its original window). Stateless: transformers' dynamic module remembers its longest
    forward, this does not."""
    rope_type = getattr(rotary, "rope_type", "default")
    if rope_type not in DYNAMIC_TYPES:
        return rotary.inv_freq.detach().float().clone()
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv, _ = ROPE_INIT_FUNCTIONS[rope_type](rotary.config, rotary.inv_freq.device, seq_len=seq_len)
    return inv.float()


def _frame_rule(model_config) -> tuple[str, int]:
    """(rope type as frame_tag reads it, the length past which it changes), read from the config once: a
    config's attribute reads cost ~0.1 ms a request in transformers 5, and a server prepares every request."""
    rule = _RULES.get(id(model_config))
    if rule is not None and rule[0] is model_config:
        return rule[1]
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    params = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"
    if rope_type == "longrope":
        out = ("longrope", int(params.get("original_max_position_embeddings") or text.original_max_position_embeddings))
    elif rope_type == "dynamic":
        out = ("dynamic", int(text.max_position_embeddings))
    else:
        out = ("", 0)
    if len(_RULES) > 64:
        _RULES.clear()
    _RULES[id(model_config)] = (model_config, out)
    return out


_RULES: dict = {}  # id(config) -> (config, rule): the config is held, so its id is not reused meanwhile


def frame_tag(model_config, seq_len: int) -> str:
    """What of a sequence's length changes its RoPE frequencies ('' for most types): cached block KV is only
    reused under the same tag. (The config is read once; a config edited in place afterwards is not seen.)"""
    rope_type, switch = _frame_rule(model_config)
    if rope_type == "longrope":
        return "|rope:long" if seq_len > switch else "|rope:short"
    if rope_type == "dynamic" and seq_len > switch:
        return f"|rope:dynamic{seq_len}"
    return ""


def frame_crossing(model_config, prompt_len: int, total_len: int) -> int | None:
    """LongRoPE switches from short to long factors past its original window: the position where a sample of
    ``prompt_len`` prompt tokens growing to ``total_len`` would cross it during generation, else None (the
    stock model then re-encodes everything it holds; the runtime refuses such a sample instead)."""
    if frame_tag(model_config, prompt_len) == "|rope:short" and frame_tag(model_config, total_len) == "|rope:long":
        text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        params = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
        return params.get("original_max_position_embeddings") or text.original_max_position_embeddings
    return None


def frame_groups(model_config, lengths: list[int]) -> list[list[int]]:
    """Indices of sequences (by their current lengths) that share RoPE frequencies, for one forward each: a
    batch forward takes one frequency set for all its rows, so LongRoPE sequences on either side of the switch
    must not share one. One group for every other RoPE type."""
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(frame_tag(model_config, n), []).append(i)
    return list(groups.values())


@contextlib.contextmanager
def rope_frame(model, seq_len: int):
    """Inside the block, every forward of ``model`` takes the RoPE frequencies of one forward over the whole
    sequence of ``seq_len`` tokens, as the stock model does, instead of choosing them from its own last
    position (dynamic and LongRoPE types choose per forward: a star block or a cached passage at early
    positions would otherwise get other frequencies than the full sequence). Other types: no change."""
    rotary = rotary_of(model)
    if getattr(rotary, "rope_type", "default") not in DYNAMIC_TYPES:
        yield
        return
    raw = getattr(type(rotary).forward, "__wrapped__", None)
    if raw is None:
        raise RuntimeError(f"{type(rotary).__name__}.forward has no undecorated form; this transformers version "
                           "cannot pin dynamic RoPE frequencies")
    saved_inv, saved_fwd = rotary.inv_freq, rotary.__dict__.get("forward")
    rotary.inv_freq = frame_inv_freq(rotary, seq_len).to(saved_inv.device)
    rotary.__dict__["forward"] = lambda x, position_ids, *a, **kw: raw(rotary, x, position_ids, *a, **kw)
    try:
        yield
    finally:
        rotary.inv_freq = saved_inv
        if saved_fwd is None:
            del rotary.__dict__["forward"]
        else:
            rotary.__dict__["forward"] = saved_fwd


class RopeReencoder:
    """Re-encodes keys of one model. Shapes: keys (..., L, D), positions (L,) long."""

    def __init__(self, model):
        rotary = rotary_of(model)
        if rotary is None or not hasattr(rotary, "inv_freq"):
            raise ValueError(f"{type(model).__name__}: block mode needs a model with one rotary embedding module")
        if isinstance(getattr(rotary, "rope_type", "default"), dict):
            raise ValueError(f"{type(model).__name__}: per-layer-type RoPE is not supported in block mode")
        self.rotary = rotary
        self.rope_type = getattr(rotary, "rope_type", "default")
        self._const = None  # (the module's inv_freq, its fp32 copy on the device, on the host)

    @property
    def rotary_dim(self) -> int:
        return 2 * self.rotary.inv_freq.numel()

    def inv_freq(self, seq_len: int) -> torch.Tensor:
        """The model's inverse frequencies (D/2,) fp32 for a forward over a whole sequence of seq_len tokens
        (frame_inv_freq: stateless, whatever ran before)."""
        return frame_inv_freq(self.rotary, seq_len)

    def inv_freq_pair(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(on the model's device, on the host) copies of inv_freq(seq_len); for RoPE types whose frequencies do
        not follow the length, made once (a request then reads nothing back from the device to compare or
        tabulate them). Callers do not write into them."""
        if self.rope_type in DYNAMIC_TYPES:
            f = self.inv_freq(seq_len)
            return f, f.cpu()
        src = self.rotary.inv_freq
        if self._const is None or self._const[0] is not src:  # the module's buffer moved or was replaced
            f = frame_inv_freq(self.rotary, seq_len)
            self._const = (src, f, f.cpu())
        return self._const[1], self._const[2]

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

    def delta(self, src_pos, src_freq, dst_pos, dst_freq) -> torch.Tensor:
        """(L, D/2) fp64 angle from src (positions, frequencies) to dst, each angle as transformers rounds it."""
        dev = dst_freq.device
        return (self.angles(dst_pos.to(dev), dst_freq).double()
                - self.angles(src_pos.to(dev), src_freq.to(dev)).double())


@fused
def _rotate(k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """k (..., L, r) rotated pairwise (i, i + r/2) by cos/sin (L, r) in fp32; returns k's dtype."""
    kf = k.float()
    half = kf.shape[-1] // 2
    rot = torch.cat((-kf[..., half:], kf[..., :half]), dim=-1)
    return (kf * cos + rot * sin).to(k.dtype)
