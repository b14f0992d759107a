"""One worker, in process: our hooked attention equals the stock transformers model, and star attention
with a single block equals dense. fp32 on the CPU; logits within 1e-4 absolute, tokens identical."""

import pytest
import torch

from conftest import assert_same_steps, make_engine, random_ids, run_ids

FAMILIES = ["random:tiny", "random:tiny-qwen2", "random:tiny-mistral"]


def hf_reference(engine, ctx, query, new_tokens):
    """The stock model (SDPA attention) on the same ids: first-step logits and greedy tokens."""
    model = engine.launcher.worker.model
    ids = torch.tensor([ctx + query])
    model.set_attn_implementation("sdpa")
    try:
        with torch.inference_mode():
            logits = model(ids).logits[0, -1].float()
            out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens,
                                 pad_token_id=0)
    finally:
        model.set_attn_implementation("star_runtime")
    return logits, out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("model", FAMILIES)
def test_dense_equals_stock_model(model):
    ctx, query = random_ids(150, 1), random_ids(9, 2)
    with make_engine(model, attn_type="dense") as eng:
        rep = run_ids(eng, ctx, query, 12)
        ref_logits, ref_tokens = hf_reference(eng, ctx, query, 12)
    assert torch.allclose(rep.logits[0], ref_logits, atol=1e-4), (rep.logits[0] - ref_logits).abs().max()
    assert rep.tokens == ref_tokens


def test_bundled_smollm2_dense_equals_stock_model():
    with make_engine(None, attn_type="dense") as eng:
        tok = eng.tokenizer
        ctx = tok.encode("The capital of France is Paris. The capital of Italy is Rome. " * 20,
                         add_special_tokens=False)
        query = tok.encode("The capital of Italy is", add_special_tokens=False)
        rep = run_ids(eng, ctx, query, 8)
        ref_logits, ref_tokens = hf_reference(eng, ctx, query, 8)
    assert torch.allclose(rep.logits[0], ref_logits, atol=1e-3, rtol=1e-4)
    assert rep.tokens == ref_tokens
    assert "Rom" in tok.decode(rep.tokens)  # the 135M model answers "Roma"


@pytest.mark.parametrize("model", FAMILIES[:2])
def test_star_single_block_equals_dense(model):
    ctx, query = random_ids(120, 3), random_ids(6, 4)
    with make_engine(model, attn_type="dense") as eng:
        dense = run_ids(eng, ctx, query, 10)
    with make_engine(model, attn_type="star", block_size=128) as eng:
        star = run_ids(eng, ctx, query, 10)
    assert star.tokens == dense.tokens
    assert_same_steps(star.logits, dense.logits, 1e-4)


def test_star_with_blocks_is_an_approximation():
    """Guards against a star mode that silently runs dense: with small blocks the logits must move."""
    ctx, query = random_ids(120, 3), random_ids(6, 4)
    with make_engine(attn_type="dense") as eng:
        dense = run_ids(eng, ctx, query, 1)
    with make_engine(attn_type="star", block_size=30) as eng:
        star = run_ids(eng, ctx, query, 1)
    assert not torch.allclose(star.logits[0], dense.logits[0], atol=1e-3)
