"""RoPE re-encoding: keys encoded at 0 and moved to offset Δ equal keys computed at Δ, for every RoPE type
the supported models use (fp32; tolerance 2e-5 relative to the key scale)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from star_runtime.attention.rope import RopeReencoder

HEAD = 32
VARIANTS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 128},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0 + i / 64 for i in range(HEAD // 2)],
                 "long_factor": [1.5 + i / 16 for i in range(HEAD // 2)], "original_max_position_embeddings": 256},
}


def tiny_model(rope):
    cfg = LlamaConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=HEAD, vocab_size=100, max_position_embeddings=256,
                      rope_theta=10000.0, rope_scaling=rope)
    return LlamaForCausalLM(cfg).eval()


def reencode(re, keys, src_pos, src_freq, dst_pos, dst_freq):
    """Keys encoded at src_pos with src_freq, moved to dst_pos with dst_freq (the steps block mode takes)."""
    return re.apply(keys, *re.rotation(re.delta(src_pos, src_freq, dst_pos, dst_freq), keys.device))


def keys_at(model, raw, positions, last_position):
    """Keys as the model computes them for a forward whose last position is ``last_position``."""
    rotary = model.get_decoder().rotary_emb
    pos = torch.cat((positions, torch.tensor([last_position]))).unsqueeze(0)
    cos, sin = rotary(raw, pos)
    k, _ = apply_rotary_pos_emb(raw, raw, cos[:, :-1], sin[:, :-1])
    return k


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("delta,total", [(0, 40), (37, 100), (180, 250), (900, 1200), (5000, 6000)])
def test_reencoded_keys_equal_keys_at_target(variant, delta, total):
    model = tiny_model(VARIANTS[variant])
    re = RopeReencoder(model)
    L = 40
    raw = torch.randn(1, 1, L, HEAD, generator=torch.Generator().manual_seed(delta))
    src = torch.arange(L)
    src_freq = re.inv_freq(L)
    cached = keys_at(model, raw, src, L - 1)
    dst = torch.arange(delta, delta + L)
    dst_freq = re.inv_freq(total)
    target = keys_at(model, raw, dst, total - 1)
    moved = reencode(re, cached, src, src_freq, dst, dst_freq)
    scale = target.abs().max()
    assert torch.allclose(moved, target, atol=2e-5 * scale, rtol=0), (moved - target).abs().max() / scale
    if delta > 0:  # the move is not a no-op
        assert not torch.allclose(cached, target, atol=1e-3 * scale)


def test_yarn_scaling_is_applied_once():
    model = tiny_model(VARIANTS["yarn"])
    assert model.get_decoder().rotary_emb.attention_scaling > 1.0
    re = RopeReencoder(model)
    raw = torch.randn(1, 1, 8, HEAD)
    cached = keys_at(model, raw, torch.arange(8), 7)
    moved = reencode(re, cached, torch.arange(8), re.inv_freq(8), torch.arange(8), re.inv_freq(8))
    assert torch.allclose(moved, cached, atol=1e-6)  # Δ = 0 is the identity: no second mscale


def test_bf16_keys_are_rotated_in_fp32_and_stored_in_bf16():
    model = tiny_model(None)
    re = RopeReencoder(model)
    raw = torch.randn(1, 1, 16, HEAD)
    cached = keys_at(model, raw, torch.arange(16), 15).bfloat16()
    moved = reencode(re, cached, torch.arange(16), re.inv_freq(16), torch.arange(300, 316), re.inv_freq(316))
    target = keys_at(model, raw, torch.arange(300, 316), 315)
    assert moved.dtype == torch.bfloat16
    assert torch.allclose(moved.float(), target, atol=3e-2 * target.abs().max())
