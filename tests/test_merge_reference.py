"""The exact merge of partial attentions against fp64 ground truth computed from the FULL score matrix (not
against another run of the same kernels): the merged log-sum-exp equals fp64 logsumexp(q K^T * scale) over
all keys, the merged output equals fp64 softmax attention, for merge_partials, merge_two, OnlineMerge (with
row slices) and the packed all-gather format phase 2 uses (pack -> stack over workers -> unpack -> merge).

Partials come from two sources: the runtime's CPU kernel (partial_attention, fp32, as production computes
them) and exact fp64 partials rounded to fp32 (the merge alone). Tolerances (fp32): lse 2e-5 absolute
(lse values are O(1..10)); output 2e-5 absolute (outputs are averages of N(0, 1) values).
"""

import pytest
import torch

from star_runtime.attention.merge import OnlineMerge, merge_partials, merge_two, pack, unpack
from star_runtime.attention.partial import partial_attention

LSE_ATOL = 2e-5
OUT_ATOL = 2e-5

SPLITS = [[64], [5, 30, 29], [1, 1, 62], [10, 0, 54], [0, 64], [64, 0], [16, 16, 16, 16], [0, 3, 0, 61, 0]]
GQA = [(4, 4), (8, 2), (9, 3), (6, 1)]  # (query heads, KV heads)
D = 32
SCALE = D ** -0.5


def qkv(b, hq, hkv, tq, tk, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, tq, D, generator=g), torch.randn(b, hkv, tk, D, generator=g),
            torch.randn(b, hkv, tk, D, generator=g))


def scores64(q, k, valid=None):
    """fp64 (B, Hq, Tq, Tk) scores of every query against every key, GQA by query head h -> KV head h // G;
    valid (Tq, Tk) bool masks scores to -inf."""
    g = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(g, dim=1)
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), kk) * SCALE
    if valid is not None:
        s = s.masked_fill(~valid, float("-inf"))
    return s


def truth(q, k, v, valid=None):
    """fp64 ground truth from the full score matrix: (out (B, Hq, Tq, D), lse (B, Hq, Tq))."""
    s = scores64(q, k, valid)
    g = q.shape[1] // k.shape[1]
    return torch.softmax(s, dim=-1) @ v.double().repeat_interleave(g, dim=1), torch.logsumexp(s, dim=-1)


def exact_partial(q, k, v):
    """A part's (out, lse) computed in fp64 from its own scores, rounded to fp32 (an empty part: 0, -inf)."""
    if k.shape[2] == 0:
        return torch.zeros(q.shape), torch.full(q.shape[:-1], float("-inf"))
    out, lse = truth(q, k, v)
    return out.float(), lse.float()


def kernel_partial(q, k, v):
    return partial_attention(q, k, v, SCALE)


SOURCES = {"kernel": kernel_partial, "exact": exact_partial}


def parts(q, k, v, splits, source):
    outs, lses, start = [], [], 0
    for n in splits:
        o, l = SOURCES[source](q, k[:, :, start:start + n], v[:, :, start:start + n])
        outs.append(o)
        lses.append(l)
        start += n
    return outs, lses


def check(out, lse, ref_out, ref_lse):
    assert out.dtype == lse.dtype == torch.float32
    assert lse.shape == ref_lse.shape and out.shape == ref_out.shape
    lse_err = (lse.double() - ref_lse).abs().max().item()
    out_err = (out.double() - ref_out).abs().max().item()
    assert lse_err <= LSE_ATOL, f"lse off by {lse_err:.3g}"
    assert out_err <= OUT_ATOL, f"out off by {out_err:.3g}"


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("gqa", GQA)
@pytest.mark.parametrize("splits", SPLITS, ids=str)
def test_merge_partials_equals_fp64_full_scores(splits, gqa, source):
    q, k, v = qkv(2, *gqa, 11, sum(splits), seed=len(splits) + 7 * gqa[0])
    outs, lses = parts(q, k, v, splits, source)
    out, lse = merge_partials(torch.stack(outs), torch.stack(lses))
    check(out, lse, *truth(q, k, v))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("gqa", GQA)
@pytest.mark.parametrize("splits", SPLITS, ids=str)
def test_merge_two_and_online_merge_equal_fp64_full_scores(splits, gqa, source):
    q, k, v = qkv(1, *gqa, 9, sum(splits), seed=3 + len(splits) + gqa[1])
    outs, lses = parts(q, k, v, splits, source)
    ref = truth(q, k, v)
    o, l = outs[0], lses[0]
    for o2, l2 in zip(outs[1:], lses[1:]):  # a left fold of merge_two
        o, l = merge_two(o, l, o2, l2)
    check(o, l, *ref)
    acc = OnlineMerge()
    for o2, l2 in zip(outs, lses):
        acc.add(o2, l2)
    check(acc.out, acc.lse, *ref)


@pytest.mark.parametrize("gqa", GQA)
def test_online_merge_row_slices_equal_fp64_masked_scores(gqa):
    """Ring-style: the second part is seen only by rows [4, 12), the third only by rows [8, 12); the truth is
    the full score matrix with the unseen keys masked out per row."""
    q, k, v = qkv(2, *gqa, 12, 40, seed=11)
    cuts = [(0, 16, slice(0, 12)), (16, 30, slice(4, 12)), (30, 40, slice(8, 12))]
    valid = torch.zeros(12, 40, dtype=torch.bool)
    acc = OnlineMerge()
    for lo, hi, rows in cuts:
        valid[rows, lo:hi] = True
        o, l = partial_attention(q[:, :, rows], k[:, :, lo:hi], v[:, :, lo:hi], SCALE)
        acc.add(o, l, q_slice=None if rows == slice(0, 12) else rows)
    check(acc.out, acc.lse, *truth(q, k, v, valid))


@pytest.mark.parametrize("gqa", GQA)
@pytest.mark.parametrize("splits", [[5, 30, 29], [10, 0, 54], [0, 0, 64], [20, 20, 24]], ids=str)
def test_packed_all_gather_format_equals_fp64_full_scores(splits, gqa):
    """What phase 2 does per layer: each worker packs (out, lse) into one (B, H, T, D + 1) fp32 tensor; the
    all-gather stacks them (W, B, H, T, D + 1); every worker unpacks and merges."""
    q, k, v = qkv(2, *gqa, 3, sum(splits), seed=5 + gqa[0])
    outs, lses = parts(q, k, v, splits, "kernel")
    packed = [pack(o, l) for o, l in zip(outs, lses)]
    assert all(p.shape == (2, gqa[0], 3, D + 1) and p.dtype == torch.float32 for p in packed)
    gathered = torch.stack(packed)  # what group.all_gather returns
    o_parts, l_parts = unpack(gathered)
    assert torch.equal(o_parts, torch.stack(outs)) and torch.equal(l_parts, torch.stack(lses))  # -inf survives
    out, lse = merge_partials(o_parts, l_parts)
    check(out, lse, *truth(q, k, v))


def test_pack_reads_half_precision_partials_in_fp32():
    q, k, v = qkv(1, 4, 2, 5, 24, seed=9)
    o, l = partial_attention(q, k, v, SCALE)
    packed = pack(o.bfloat16(), l)
    assert packed.dtype == torch.float32
    o2, l2 = unpack(packed)
    assert torch.equal(o2, o.bfloat16().float()) and torch.equal(l2, l)


def test_every_part_empty_gives_zero_and_minus_inf():
    q, k, v = qkv(1, 4, 2, 3, 0, seed=1)
    outs, lses = parts(q, k, v, [0, 0, 0], "kernel")
    out, lse = merge_partials(*unpack(torch.stack([pack(o, l) for o, l in zip(outs, lses)])))
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse))
    o, l = merge_two(outs[0], lses[0], outs[1], lses[1])
    assert torch.all(o == 0) and torch.all(torch.isneginf(l))


def test_large_score_offsets_do_not_overflow():
    """Parts whose lse differ by hundreds (one part dominates): the merge stays finite and exact."""
    q, k, v = qkv(1, 4, 4, 6, 48, seed=2)
    k = k.clone()
    k[:, :, :16] *= 40.0  # part 1: huge scores, part 2: ordinary ones
    outs, lses = parts(q, k, v, [16, 32], "kernel")
    ref_out, ref_lse = truth(q, k, v)
    out, lse = merge_partials(torch.stack(outs), torch.stack(lses))
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    # lse is in the hundreds here: fp32 gives ~1e-7 relative
    assert torch.allclose(lse.double(), ref_lse, rtol=1e-6, atol=LSE_ATOL)
    assert torch.allclose(out.double(), ref_out, atol=OUT_ATOL)
    o, l = merge_two(outs[1], lses[1], outs[0], lses[0])
    assert torch.allclose(l.double(), ref_lse, rtol=1e-6, atol=LSE_ATOL)
    assert torch.allclose(o.double(), ref_out, atol=OUT_ATOL)
