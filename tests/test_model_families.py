"""More model families against the stock transformers model (fp32 on the CPU; logits within 1e-4 absolute at
every step, greedy tokens identical):

  * tiny-qwen3: RMS norms on q and k inside attention (before RoPE);
  * tiny-phi3: fused projections and LongRoPE, whose rotary module picks the short factors for a forward
    whose last position is < 128 (original_max_position_embeddings) and the long factors beyond.

Modes: dense (== model.generate with SDPA), star with one block (== dense), star with several blocks
(== the star-mask reference of test_star_reference.py), block mode (== the stock model under the
Block-Attention mask, full forward per step).

LongRoPE chooses its frequencies from the sequence length; the runtime runs the model on pieces (the context
alone, a batch of blocks, the anchor, one decode token), so every piece of a sample's phase 1 takes the
frequencies of the whole prompt (attention/rope.py rope_frame), and cached blocks are keyed by that choice. A
sample that would cross the switch *while generating* (the stock model then re-encodes everything it holds)
is refused in one line instead ("generation-crosses" cases).
"""

import pytest
import torch

from conftest import assert_same_steps, make_engine, random_ids, run_ids
from star_runtime.errors import ConfigError
from test_star_reference import star_mask_reference

ATOL = 1e-4
FAMILIES = ["random:tiny-qwen3", "random:tiny-phi3"]
SWITCH = 128  # tiny-phi3's original_max_position_embeddings: long factors for sequences longer than this

CROSSES = {"generation-crosses"}  # Phi-3 cases the runtime refuses (prompt <= 128 < prompt + generated)


def refused(model, case) -> bool:
    return model == "random:tiny-phi3" and case in CROSSES


# (context, query, new tokens); the Phi-3 case names say where the sequence grows past 128 tokens (the forward
# of decode step k, 0-based, covers prompt + k tokens)
DENSE_CASES = {
    "short": (60, 9, 12),  # 81 tokens in all: short factors throughout
    "long": (150, 9, 12),  # context alone beyond 128: long factors throughout
    "prompt-crosses": (125, 9, 6),
    "generation-crosses": (110, 9, 16),
}

PASSAGES = [
    "The lighthouse keeper counted ships every night. ",
    "Copper turns green when it weathers in rain and salt air. ",
    "In the village market, apples cost three coins and pears cost five. ",
    "A short note. ",
    "Owls hunt at dusk over the wet meadows by the river. ",
    "The old bridge was rebuilt in stone after the flood of the spring. ",
    "Bakers rise before dawn to light the ovens and knead the dough. ",
    "Glass is made from sand, soda and lime melted together. ",
    "The choir sang in the cathedral on the last evening of the festival. ",
    "Tides follow the moon and rise twice a day along the coast. ",
]
QUERY = " Question: what do pears cost? Answer:"
BLOCK_CASES = {  # (passages, new tokens)
    "short": (PASSAGES[:4], 6),
    "long": (PASSAGES, 6),
    "generation-crosses": (PASSAGES[:8], 22),
}


def compare(tokens, logits, ref_tokens, ref_logits, atol=ATOL):
    """Tokens and every step's logits agree."""
    assert_same_steps(logits, ref_logits, atol)
    assert tokens == ref_tokens, f"tokens differ: {tokens} vs {ref_tokens}"


def hf_generate(model, ctx, query, new_tokens):
    """The stock model (SDPA) through model.generate, greedy: tokens and every step's logits."""
    ids = torch.tensor([ctx + query])
    prev = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    finally:
        model.set_attn_implementation(prev)
    return out.sequences[0, ids.shape[1]:].tolist(), [step[0].float() for step in out.logits]


def block_mask(block_lens, total):
    """(total, total) bool: causal; a local block sees only itself; the final block and the generated tokens
    see everything before them."""
    mask = torch.ones(total, total, dtype=torch.bool).tril()
    start = 0
    for n in block_lens:
        mask[start:start + n, :start] = False
        start += n
    return mask


def block_reference(model, blocks_ids, final_ids, new_tokens):
    seq = [t for b in blocks_ids for t in b] + list(final_ids)
    tokens, logits_all = [], []
    prev = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        for _ in range(new_tokens):
            t = len(seq)
            mask = block_mask([len(b) for b in blocks_ids], t)
            with torch.inference_mode():
                logits = model(torch.tensor([seq]), attention_mask=mask[None, None],
                               position_ids=torch.arange(t)[None]).logits[0, -1].float()
            logits_all.append(logits)
            tokens.append(int(logits.argmax()))
            seq.append(tokens[-1])
    finally:
        model.set_attn_implementation(prev)
    return tokens, logits_all


def dense_inputs(case):
    c, q, n = DENSE_CASES[case]
    return random_ids(c, c), random_ids(q, c + 1), n


def test_tiny_configs_are_what_the_cases_assume():
    from star_runtime.models.random_configs import random_config

    phi3 = random_config("tiny-phi3")
    assert phi3.rope_parameters["rope_type"] == "longrope"
    assert phi3.rope_parameters["original_max_position_embeddings"] == SWITCH < phi3.max_position_embeddings
    half = phi3.hidden_size // phi3.num_attention_heads // 2
    assert len(phi3.rope_parameters["short_factor"]) == len(phi3.rope_parameters["long_factor"]) == half
    qwen3 = random_config("tiny-qwen3")
    assert qwen3.model_type == "qwen3" and qwen3.vocab_size == phi3.vocab_size == 49152
    with make_engine("random:tiny-qwen3", attn_type="dense") as eng:
        attn = eng.launcher.worker.model.model.layers[0].self_attn
        assert hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
    c, q, n = DENSE_CASES["prompt-crosses"]
    assert c <= SWITCH < c + q
    c, q, n = DENSE_CASES["generation-crosses"]
    assert c + q <= SWITCH < c + q + n - 1  # the last step's forward covers prompt + n - 1 tokens
    assert DENSE_CASES["long"][0] > SWITCH


@pytest.mark.parametrize("case", DENSE_CASES)
@pytest.mark.parametrize("model", FAMILIES)
def test_dense_equals_stock_generate(model, case):
    ctx, query, n = dense_inputs(case)
    with make_engine(model, attn_type="dense") as eng:
        if refused(model, case):
            with pytest.raises(ConfigError, match="LongRoPE switches to its long factors"):
                run_ids(eng, ctx, query, n)
            return
        rep = run_ids(eng, ctx, query, n)
        ref_tokens, ref_logits = hf_generate(eng.launcher.worker.model, ctx, query, n)
    compare(rep.tokens, rep.logits, ref_tokens, ref_logits)


@pytest.mark.parametrize("case", DENSE_CASES)
@pytest.mark.parametrize("model", FAMILIES)
def test_star_single_block_equals_dense(model, case):
    ctx, query, n = dense_inputs(case)
    if refused(model, case):
        pytest.skip("refused: covered by test_dense_equals_stock_generate")
    with make_engine(model, attn_type="dense") as eng:
        dense = run_ids(eng, ctx, query, n)
    with make_engine(model, attn_type="star", block_size=256) as eng:
        star = run_ids(eng, ctx, query, n)
    assert star.shard_tokens == [len(ctx)]
    compare(star.tokens, star.logits, dense.tokens, dense.logits)


STAR_CTX, STAR_BLOCK, STAR_ANCHOR = 300, 64, 16  # 5 blocks (the last 44 tokens), crossing position 128


@pytest.mark.parametrize("model", FAMILIES)
def test_star_several_blocks_equals_star_mask_reference(model):
    ctx, query = random_ids(STAR_CTX, 5), random_ids(7, 6)
    with make_engine(model, attn_type="star", block_size=STAR_BLOCK, anchor_block_size=STAR_ANCHOR) as eng:
        rep = run_ids(eng, ctx, query, 6)
        ref_tokens, ref_logits = star_mask_reference(eng.launcher.worker.model, ctx, query, STAR_BLOCK,
                                                     STAR_ANCHOR, 6)
    compare(rep.tokens, rep.logits, ref_tokens, ref_logits)


@pytest.mark.parametrize("model", FAMILIES)
def test_star_three_workers_equal_one_worker(ray_session, model):
    ctx, query = random_ids(STAR_CTX, 5), random_ids(7, 6)
    kw = dict(attn_type="star", block_size=STAR_BLOCK, anchor_block_size=STAR_ANCHOR)
    with make_engine(model, **kw) as eng:
        one = run_ids(eng, ctx, query, 6)
    with make_engine(model, num_workers=3, **kw) as eng:
        three = run_ids(eng, ctx, query, 6)
    assert three.shard_tokens == [128, 128, 44]  # blocks (0, 1) | (2, 3) | (4,)
    compare(three.tokens, three.logits, one.tokens, one.logits)


@pytest.mark.parametrize("case", BLOCK_CASES)
@pytest.mark.parametrize("model", FAMILIES)
def test_block_mode_equals_block_mask_reference(model, case):
    passages, n = BLOCK_CASES[case]
    with make_engine(model, attn_type="block") as eng:
        if refused(model, case):
            with pytest.raises(ConfigError, match="sample 0: the prompt .* would grow past 128 while generating"):
                eng.prepare("", QUERY, blocks=passages, keep_logits=True, max_new_tokens=n)
            return
        req = eng.prepare("", QUERY, blocks=passages, keep_logits=True, max_new_tokens=n)
        rep = eng.run(req)
        ids = [list(b.ids) for b in req.blocks]
        ref_tokens, ref_logits = block_reference(eng.launcher.worker.model, ids, req.query_ids, n)
    prompt = len(req.context_ids) + len(req.query_ids)
    assert len(ids) == len(passages)
    # the forward of step k (0-based) covers prompt + k tokens
    assert (prompt + n - 1 <= SWITCH) if case == "short" else (prompt > SWITCH) if case == "long" \
        else (prompt <= SWITCH < prompt + n - 1)
    compare(rep.tokens, rep.logits, ref_tokens, ref_logits)


def test_longrope_sequences_on_both_sides_of_the_switch_decode_together_exactly():
    """A server's running batch mixes short and long sequences: each group keeps its own RoPE factors, so a
    short sequence decodes as it does alone."""
    with make_engine("random:tiny-phi3", attn_type="dense") as eng:
        short = eng.prepare_ids(random_ids(40, 1), random_ids(5, 2), index=1, max_new_tokens=30)
        long = eng.prepare_ids(random_ids(200, 3), random_ids(5, 4), index=2, max_new_tokens=30)
        alone = [eng.serve_step([], [short], [])["new"][0][0]]
        for _ in range(20):
            alone.append(eng.serve_step([], [], [1])["step"][0][0])
        eng.serve_step([1], [], [])
        first = eng.serve_step([], [short, long], [])["new"]
        together = [first[0][0]]
        for _ in range(20):
            together.append(eng.serve_step([], [], [1, 2])["step"][0][0])
    assert together == alone
