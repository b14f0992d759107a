"""Named random-weight configurations of real shapes, for speed work and for tests of other model families.

Weights are drawn from a fixed seed, so every worker builds the same model. They use the bundled
SmolLM2 tokenizer; the vocabulary size is the real model's (ids beyond the tokenizer are never produced
by tokenizing text, and benchmarks feed random ids).
"""

from __future__ import annotations

from transformers import LlamaConfig, MistralConfig, Qwen2Config

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


RANDOM_CONFIGS = {
    # Llama-3.1-8B's shape; window widened to 1M tokens so long-context speed runs are possible.
    "llama3-8b": lambda: _llama3_8b(),
    # Two layers of Llama-3.1-8B's shape: quick GPU smoke runs with real head sizes.
    "llama3-8b-2l": lambda: _llama3_8b(num_hidden_layers=2),
    "tiny": lambda: LlamaConfig(**_TINY, rope_theta=10000.0),
    "tiny-qwen2": lambda: Qwen2Config(**_TINY, rope_theta=1000000.0, use_sliding_window=False),
    "tiny-mistral": lambda: MistralConfig(**_TINY, rope_theta=10000.0, sliding_window=None),
}


def random_config(name: str):
    if name not in RANDOM_CONFIGS:
        raise KeyError(f"unknown random model {name!r}; choose one of: {', '.join(sorted(RANDOM_CONFIGS))}")
    return RANDOM_CONFIGS[name]()
