"""Multi-block star attention equals an independent reference: the stock model (SDPA) over the whole sequence
with ONE 4D boolean star mask, greedy, re-running the full forward at every step.

The mask (True = may attend), for a context of L tokens cut into blocks of S with anchor A:
  * context block 0 (tokens [0, S)) is plain causal;
  * a token of context block i >= 1 sees the anchor tokens [0, A) and the tokens of its own block up to
    itself, nothing else;
  * the query and every generated token see everything before them (and themselves).
Position ids are the ordinary global ones, 0..T-1. Tokens and the logits of every step must agree
(fp32 on the CPU, 1e-4 absolute), on one in-process worker and on three Ray workers.
"""

import pytest
import torch

from conftest import assert_same_steps, make_engine, random_ids, run_ids

ATOL = 1e-4  # fp32 logits, absolute
NEW_TOKENS = 8
MODEL = "random:tiny"

# (context length, block size, anchor size): anchor < block, anchor == block, an uneven (shorter) last block
CASES = {
    "anchor<block": (96, 32, 12),
    "anchor==block": (96, 32, 32),
    "uneven-last-block": (110, 32, 16),
    "uneven-anchor==block": (110, 32, 32),
}


def star_mask(ctx_len: int, block: int, anchor: int, total: int, with_anchor: bool = True) -> torch.Tensor:
    """(total, total) bool star mask, written out token by token (independent of the runtime's plan code).
    with_anchor False drops the anchor from blocks i >= 1 (used to show the comparison would catch that)."""
    mask = torch.zeros(total, total, dtype=torch.bool)
    for i in range(total):
        if i >= ctx_len or i < block:  # query / generated tokens, and block 0: ordinary causal
            mask[i, : i + 1] = True
            continue
        start = (i // block) * block
        mask[i, start : i + 1] = True  # its own block, causally
        if with_anchor:
            mask[i, :anchor] = True  # the anchor: the first A context tokens
    return mask


def star_mask_reference(model, ctx, query, block, anchor, new_tokens, with_anchor=True):
    """Greedy decode of the stock model under the star mask, no KV cache: one full forward per step."""
    seq = list(ctx) + list(query)
    tokens, logits_all = [], []
    prev = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        for _ in range(new_tokens):
            t = len(seq)
            mask = star_mask(len(ctx), block, anchor, t, with_anchor)
            with torch.inference_mode():
                logits = model(torch.tensor([seq]), attention_mask=mask[None, None],
                               position_ids=torch.arange(t)[None]).logits[0, -1].float()
            logits_all.append(logits)
            tok = int(logits.argmax())
            tokens.append(tok)
            seq.append(tok)
    finally:
        model.set_attn_implementation(prev)
    return tokens, logits_all


def inputs(name):
    ctx_len, block, anchor = CASES[name]
    seed = sum(map(ord, name))
    return random_ids(ctx_len, seed), random_ids(7, seed + 1), block, anchor


def test_star_mask_shape():
    """The reference mask itself: block 0 causal, later blocks see exactly anchor + own block, queries all."""
    m = star_mask(10, 4, 2, 12)  # blocks [0,4) [4,8) [8,10), anchor [0,2), query 10, 11
    assert m[3].tolist() == [True] * 4 + [False] * 8
    assert m[5].tolist() == [True, True, False, False, True, True] + [False] * 6
    assert m[9].tolist() == [True, True] + [False] * 6 + [True, True] + [False] * 2
    assert m[11].all() and m[10, :11].all() and not m[10, 11]
    assert not (m & ~torch.ones(12, 12, dtype=torch.bool).tril()).any()  # never a future token


@pytest.mark.parametrize("case", CASES)
def test_star_one_worker_equals_star_mask_reference(case):
    ctx, query, block, anchor = inputs(case)
    with make_engine(MODEL, attn_type="star", block_size=block, anchor_block_size=anchor) as eng:
        rep = run_ids(eng, ctx, query, NEW_TOKENS)
        ref_tokens, ref_logits = star_mask_reference(eng.launcher.worker.model, ctx, query, block, anchor,
                                                     NEW_TOKENS)
    assert len(rep.tokens) == NEW_TOKENS
    assert rep.tokens == ref_tokens
    assert_same_steps(rep.logits, ref_logits)


@pytest.fixture(scope="module")
def reference_model():
    """The same seeded random weights as every Ray worker, in this process."""
    with make_engine(MODEL, attn_type="dense") as eng:
        yield eng.launcher.worker.model


@pytest.fixture(scope="module")
def three_ray_workers(ray_session):
    """One star run on three Ray workers for every case below (starting workers costs seconds): each case's
    layout goes in as the call's options, as a caller varying block and anchor sizes per request does."""
    with make_engine(MODEL, attn_type="star", block_size=32, num_workers=3) as eng:
        yield eng


@pytest.mark.parametrize("case", CASES)
def test_star_three_ray_workers_equal_star_mask_reference(three_ray_workers, reference_model, case):
    from star_runtime.parallel.worker import Options, Request

    ctx, query, block, anchor = inputs(case)
    rep = three_ray_workers.run(Request(0, ctx, query, NEW_TOKENS, keep_logits=True),
                                Options(block_size=block, anchor_block_size=anchor))
    ref_tokens, ref_logits = star_mask_reference(reference_model, ctx, query, block, anchor, NEW_TOKENS)
    n_blocks = -(-len(ctx) // block)
    per_rank = [len(p) for p in torch.tensor_split(torch.arange(n_blocks), 3)]
    assert sum(rep.shard_tokens) == len(ctx) and all(n > 0 for n in rep.shard_tokens), rep.shard_tokens
    assert rep.shard_tokens[0] == per_rank[0] * block  # blocks go to workers in order
    assert rep.tokens == ref_tokens
    assert_same_steps(rep.logits, ref_logits)


def test_dropping_the_anchor_changes_the_reference(reference_model):
    """The comparison above can catch a star mode that forgets the anchor: without it the reference's logits
    move far beyond the tolerance."""
    ctx, query, block, anchor = inputs("anchor<block")
    _, with_a = star_mask_reference(reference_model, ctx, query, block, anchor, 1)
    _, without = star_mask_reference(reference_model, ctx, query, block, anchor, 1, with_anchor=False)
    assert (with_a[0] - without[0]).abs().max() > 100 * ATOL
