"""apb --query_before_blocks against an independent reference, fp32 on the CPU: the stock model (SDPA) over
one sequence holding the context, a copy of the query before every block after the first (at the positions
just before the block) and the query, under one 4D mask -- a block sees the anchor, the passing tokens of the
earlier blocks, its copy of the query and itself; a copy sees the anchor, the passing tokens before it and
itself; the query and generated tokens see the context and themselves, never a copy. Tokens equal, logits 1e-4,
with nothing passing and with a fixed choice passing."""

import pytest
import torch

import star_runtime.modes.apb as apb
from conftest import assert_same_steps, make_engine, run_ids
from test_apb import CASES, MODEL, NEW, fixed_choice, inputs


def reference(model, ctx, query, block, anchor, count, new):
    """Tokens and per-step logits of the reference sequence (see the module docstring)."""
    n, t = len(ctx), len(query)
    blocks = -(-n // block)
    chosen = []
    for b in range(blocks):
        start, end = b * block, min(n, (b + 1) * block)
        skip = anchor if b == 0 else 0
        chosen.append([start + j for j in range(skip, end - start, 3)][:count])
    ids, pos, kind = list(ctx), list(range(n)), [("ctx", i // block) for i in range(n)]
    for b in range(1, blocks):  # the copies, after the context in the sequence, at their own positions
        ids += list(query)
        pos += list(range(b * block - t, b * block))
        kind += [("copy", b)] * t
    copy_start = {b: n + (b - 1) * t for b in range(1, blocks)}
    tokens, logits = [], []
    seq_ids, seq_pos, seq_kind = list(ids) + list(query), pos + list(range(n, n + t)), kind + [("final", 0)] * t
    prev = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        for _ in range(new):
            total = len(seq_ids)
            mask = torch.zeros(total, total, dtype=torch.bool)
            for i, (k, b) in enumerate(seq_kind):
                if k == "final":
                    mask[i, :n] = True
                    mask[i, [j for j in range(i + 1) if seq_kind[j][0] == "final"]] = True
                    continue
                if k == "ctx" and b == 0:
                    mask[i, : i + 1] = True
                    continue
                mask[i, :anchor] = True
                for j in range(b):
                    mask[i, chosen[j]] = True
                c0 = copy_start[b]
                if k == "copy":
                    mask[i, c0: i + 1] = True
                else:
                    mask[i, c0: c0 + t] = True
                    mask[i, b * block: i + 1] = True
            with torch.inference_mode():
                out = model(torch.tensor([seq_ids]), attention_mask=mask[None, None],
                            position_ids=torch.tensor([seq_pos])).logits[0, -1].float()
            logits.append(out)
            tokens.append(int(out.argmax()))
            seq_ids.append(tokens[-1])
            seq_pos.append(seq_pos[-1] + 1)
            seq_kind.append(("final", 0))
    finally:
        model.set_attn_implementation(prev)
    return tokens, logits


@pytest.mark.parametrize("count", [0, 4])
@pytest.mark.parametrize("case", CASES)
def test_query_before_blocks_equals_the_mask_reference(case, count, monkeypatch):
    ctx, query, block, anchor = inputs(case)
    monkeypatch.setattr(apb, "select_passing", fixed_choice)
    with make_engine(MODEL, attn_type="apb", block_size=block, anchor_block_size=anchor, passing_tokens=count,
                     query_before_blocks=True) as eng:
        rep = run_ids(eng, ctx, query, NEW)
        tokens, logits = reference(eng.launcher.worker.model, ctx, query, block, anchor, count, NEW)
    assert rep.tokens == tokens
    assert_same_steps(rep.logits, logits, 1e-4)


def test_query_before_blocks_changes_the_answer_and_is_off_by_default():
    ctx, query, block, anchor = inputs("anchor==block")
    kw = dict(block_size=block, anchor_block_size=anchor, passing_tokens=0)
    with make_engine(MODEL, attn_type="apb", **kw) as eng:
        plain = run_ids(eng, ctx, query, NEW)
    with make_engine(MODEL, attn_type="star", block_size=block, anchor_block_size=anchor) as eng:
        star = run_ids(eng, ctx, query, NEW)
    with make_engine(MODEL, attn_type="apb", query_before_blocks=True, **kw) as eng:
        before = run_ids(eng, ctx, query, NEW)
    assert_same_steps(plain.logits, star.logits, 1e-4)
    assert (before.logits[0] - star.logits[0]).abs().max() > 1e-3
