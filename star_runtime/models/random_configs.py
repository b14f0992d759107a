"""Named random-weight configurations of real shapes, for speed work and for tests of other model families.

Weights are drawn from a fixed seed, so every worker builds the same model. They use the bundled
SmolLM2 tokenizer; the vocabulary size is the real model's (ids beyond the tokenizer are never produced
by tokenizing text, and benchmarks feed random ids).
"""

from __future__ import annotations

from transformers import LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config

_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=49152, max_position_embeddings=8192, initializer_range=0.3,
             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def _llama3_8b(**over):
    cfg = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=1048576, rms_norm_eps=1e-5,
               rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    cfg.update(over)
    return LlamaConfig(**cfg)


_TINY_HEAD = _TINY["hidden_size"] // _TINY["num_attention_heads"]  # 16


def _tiny_phi3():
    """Phi-3 (fused qkv/gate-up projections) with LongRoPE: short factors up to 128 positions, long ones past
    them (the rotary module picks the set from the forward's last position)."""
    half = _TINY_HEAD // 2
    return Phi3Config(**_TINY, rope_theta=10000.0, original_max_position_embeddings=128,
                      rope_scaling={"rope_type": "longrope", "factor": _TINY["max_position_embeddings"] / 128,
                                    "short_factor": [1.0 + i / 32 for i in range(half)],
                                    "long_factor": [1.5 + i / 4 for i in range(half)]})


RANDOM_CONFIGS = {
    # Llama-3.1-8B's shape; window widened to 1M tokens so long-context speed runs are possible.
    "llama3-8b": lambda: _llama3_8b(),
    # Two layers of Llama-3.1-8B's shape: quick GPU smoke runs with real head sizes.
    "llama3-8b-2l": lambda: _llama3_8b(num_hidden_layers=2),
    "tiny": lambda: LlamaConfig(**_TINY, rope_theta=10000.0),
    "tiny-qwen2": lambda: Qwen2Config(**_TINY, rope_theta=1000000.0, use_sliding_window=False),
    "tiny-mistral": lambda: MistralConfig(**_TINY, rope_theta=10000.0, sliding_window=None),
    # Qwen3: RMS norms on q and k inside attention (before RoPE)
    "tiny-qwen3": lambda: Qwen3Config(**_TINY, head_dim=_TINY_HEAD, rope_theta=1000000.0, use_sliding_window=False),
    "tiny-phi3": _tiny_phi3,
    # tiny Llamas with scaled RoPE (block mode re-encodes their keys: tests/test_rope_production.py)
    "tiny-llama3rope": lambda: LlamaConfig(**_TINY, rope_theta=10000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    "tiny-yarn": lambda: LlamaConfig(**_TINY, rope_theta=10000.0, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}),
    # dynamic NTK acts only past max_position_embeddings (64 here), which is also the Engine's window
    "tiny-dynamic": lambda: LlamaConfig(**{**_TINY, "max_position_embeddings": 64}, rope_theta=10000.0,
                                        rope_scaling={"rope_type": "dynamic", "factor": 4.0}),
}


def random_config(name: str):
    if name not in RANDOM_CONFIGS:
        raise KeyError(f"unknown random model {name!r}; choose one of: {', '.join(sorted(RANDOM_CONFIGS))}")
    return RANDOM_CONFIGS[name]()
