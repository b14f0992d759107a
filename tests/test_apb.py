"""APB passing blocks (modes/apb.py) against independent references, fp32 on the CPU:

* with --passing_tokens 0 it is star attention, with --passing_tokens >= the block it is dense (token for
  token, logits 1e-4), anchor shorter than and equal to the block, an uneven last block;
* with the chosen tokens fixed, the stock model (SDPA) under one 4D mask in which a block sees the anchor, the
  chosen tokens of every earlier block and itself: the same tokens and logits (the plumbing: masks, positions,
  the shard, the query behind each block);
* the scoring: the query's softmax attention over a block's keys, summed over query tokens and the KV head's
  query heads, pooled, top k, anchor tokens never -- against a loop written out here;
* four Ray workers (the layer-by-layer exchange, ranks with only the anchor or no block) give one worker's.
"""

import pytest
import torch

import star_runtime.modes.apb as apb
from conftest import assert_same_steps, make_engine, random_ids, run_ids

MODEL = "random:tiny"
NEW = 6
CASES = {"anchor<block": (96, 32, 12), "anchor==block": (96, 32, 32), "uneven-last-block": (110, 32, 16)}


def inputs(name):
    n, block, anchor = CASES[name]
    seed = sum(map(ord, name))
    return random_ids(n, seed), random_ids(7, seed + 1), block, anchor


def run(mode, ctx, query, **kw):
    with make_engine(MODEL, attn_type=mode, **kw) as eng:
        return run_ids(eng, ctx, query, NEW)


@pytest.mark.parametrize("case", CASES)
def test_no_passing_is_star_and_full_passing_is_dense(case):
    ctx, query, block, anchor = inputs(case)
    star = run("star", ctx, query, block_size=block, anchor_block_size=anchor)
    none = run("apb", ctx, query, block_size=block, anchor_block_size=anchor, passing_tokens=0)
    assert none.tokens == star.tokens
    assert_same_steps(none.logits, star.logits, 1e-4)
    dense = run("dense", ctx, query)
    full = run("apb", ctx, query, block_size=block, anchor_block_size=anchor, passing_tokens=block)
    assert full.tokens == dense.tokens
    assert_same_steps(full.logits, dense.logits, 1e-4)
    some = run("apb", ctx, query, block_size=block, anchor_block_size=anchor, passing_tokens=5)
    assert (some.logits[0] - star.logits[0]).abs().max() > 1e-3  # passing 5 tokens is neither of them
    assert (some.logits[0] - dense.logits[0]).abs().max() > 1e-3


def fixed_choice(qq, kb, scale, count, skip=0, pool=apb.POOL):
    """Every third candidate token of the block, at most ``count``, for every KV head."""
    hkv, n, _ = kb.shape
    idx = torch.arange(skip, n, 3)[:count]
    return idx.expand(hkv, -1)


def passing_mask(ctx_len, block, anchor, count, total):
    """(total, total) bool: block 0 causal; a token of block i >= 1 sees the anchor, the fixed choice of every
    earlier block (anchor tokens excluded) and its own block up to itself; query and generated tokens see all."""
    chosen = []
    for b in range(-(-ctx_len // block)):
        start, end = b * block, min(ctx_len, (b + 1) * block)
        skip = anchor if b == 0 else 0
        chosen.append([start + j for j in range(skip, end - start, 3)][:count])
    mask = torch.zeros(total, total, dtype=torch.bool)
    for i in range(total):
        if i >= ctx_len or i < block:
            mask[i, : i + 1] = True
            continue
        b = i // block
        mask[i, b * block: i + 1] = True
        mask[i, :anchor] = True
        for j in range(b):
            mask[i, chosen[j]] = True
    return mask


@pytest.mark.parametrize("case", CASES)
def test_fixed_choice_equals_the_mask_reference(case, monkeypatch):
    ctx, query, block, anchor = inputs(case)
    count = 4
    monkeypatch.setattr(apb, "select_passing", fixed_choice)
    with make_engine(MODEL, attn_type="apb", block_size=block, anchor_block_size=anchor,
                     passing_tokens=count) as eng:
        rep = run_ids(eng, ctx, query, NEW)
        model = eng.launcher.worker.model
        seq, tokens, logits = list(ctx) + list(query), [], []
        prev = model.config._attn_implementation
        model.set_attn_implementation("sdpa")
        try:
            for _ in range(NEW):
                mask = passing_mask(len(ctx), block, anchor, count, len(seq))
                with torch.inference_mode():
                    out = model(torch.tensor([seq]), attention_mask=mask[None, None],
                                position_ids=torch.arange(len(seq))[None]).logits[0, -1].float()
                logits.append(out)
                tokens.append(int(out.argmax()))
                seq.append(tokens[-1])
        finally:
            model.set_attn_implementation(prev)
    assert rep.tokens == tokens
    assert_same_steps(rep.logits, logits, 1e-4)


def test_scoring_against_a_written_out_loop():
    g = torch.Generator().manual_seed(0)
    hq, hkv, t, n, d, count, skip = 6, 2, 3, 40, 8, 5, 4
    qq, kb = torch.randn(hq, t, d, generator=g), torch.randn(hkv, n, d, generator=g)
    scale = d ** -0.5
    got = apb.select_passing(qq, kb, scale, count, skip)
    for h in range(hkv):
        score = [0.0] * n
        for j in range(hq // hkv):
            for tt in range(t):
                w = torch.softmax(torch.stack([qq[h * (hq // hkv) + j, tt] @ kb[h, m] for m in range(n)]) * scale, 0)
                for m in range(n):
                    score[m] += float(w[m])
        half = apb.POOL // 2
        pooled = [sum(score[max(0, m - half): m + half + 1]) / len(score[max(0, m - half): m + half + 1])
                  for m in range(n)]
        want = sorted(sorted(range(skip, n), key=lambda m: -pooled[m])[:count])
        assert got[h].tolist() == want
    assert apb.select_passing(qq, kb, scale, 100, skip).tolist() == [list(range(skip, n))] * hkv
    assert apb.select_passing(qq, kb, scale, 0, skip).shape == (hkv, 0)


def test_four_ray_workers_equal_one(ray_session):
    """3 blocks on 4 workers: rank 0 holds only the anchor block, rank 3 no block; both take part in every
    layer's exchange, and the answer is one worker's."""
    ctx, query, block, anchor = inputs("anchor==block")
    kw = dict(block_size=block, anchor_block_size=anchor, passing_tokens=6)
    four = run("apb", ctx, query, num_workers=4, **kw)
    alone = run("apb", ctx, query, **kw)
    assert four.tokens == alone.tokens
    assert_same_steps(four.logits, alone.logits, 1e-4)
