"""Merging partial attentions equals attention over the whole KV set (fp32), for every kernel we use."""

import pytest
import torch

from star_runtime.attention.merge import OnlineMerge, merge_partials, pack, unpack
from star_runtime.attention.partial import _cpu_flash, _math, empty_partial, partial_attention, reference_attention

KERNELS = {"math": _math, "cpu_flash": _cpu_flash}


def qkv(b, hq, hkv, tq, tk, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, tq, d, generator=g), torch.randn(b, hkv, tk, d, generator=g),
            torch.randn(b, hkv, tk, d, generator=g))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(1, 4, 4, 7, 7, 16), (2, 8, 2, 33, 33, 32), (1, 9, 3, 64, 64, 64)])
@pytest.mark.parametrize("causal", [False, True])
def test_kernels_match_reference(kernel, shape, causal):
    q, k, v = qkv(*shape)
    scale = shape[-1] ** -0.5
    out, lse = KERNELS[kernel](q, k, v, scale, causal)
    ref = reference_attention(q, k, v, scale, causal)
    assert torch.allclose(out.double(), ref, atol=2e-5), (out.double() - ref).abs().max()
    # lse against fp64 logsumexp of the scores
    kk = k.repeat_interleave(shape[1] // shape[2], 1).double()
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), kk) * scale
    if causal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
    assert torch.allclose(lse.double(), torch.logsumexp(s, -1), atol=2e-5)


@pytest.mark.parametrize("splits", [[5, 30, 29], [1, 1, 62], [32, 32], [10, 0, 54]])
@pytest.mark.parametrize("gqa", [(8, 8), (8, 2), (9, 3)])
def test_merge_equals_full_attention(splits, gqa):
    hq, hkv = gqa
    q, k, v = qkv(2, hq, hkv, 11, sum(splits), 32, seed=len(splits))
    scale = 32 ** -0.5
    outs, lses, start = [], [], 0
    for n in splits:
        o, l = partial_attention(q, k[:, :, start:start + n], v[:, :, start:start + n], scale)
        outs.append(o)
        lses.append(l)
        start += n
    out, lse = merge_partials(torch.stack(outs), torch.stack(lses))
    ref = reference_attention(q, k, v, scale)
    assert torch.allclose(out.double(), ref, atol=1e-5), (out.double() - ref).abs().max()
    full_o, full_l = partial_attention(q, k, v, scale)
    assert torch.allclose(lse, full_l, atol=1e-5)
    # order does not matter
    out_r, _ = merge_partials(torch.stack(outs[::-1]), torch.stack(lses[::-1]))
    assert torch.allclose(out_r, out, atol=1e-6)


def test_causal_split_into_prefix_and_diagonal():
    """The exact causal identity phase 2 relies on: causal over [old ; new] = merge(old, causal new)."""
    q, k, v = qkv(1, 4, 2, 40, 40, 16, seed=3)
    scale = 0.25
    old = 25  # the last 15 rows are the new tokens
    o1, l1 = partial_attention(q[:, :, old:], k[:, :, :old], v[:, :, :old], scale)
    o2, l2 = partial_attention(q[:, :, old:], k[:, :, old:], v[:, :, old:], scale, causal=True)
    out, _ = merge_partials(torch.stack((o1, o2)), torch.stack((l1, l2)))
    ref = reference_attention(q, k, v, scale, causal=True)[:, :, old:]
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_online_merge_with_row_slices_and_empty_parts():
    q, k, v = qkv(1, 2, 2, 10, 30, 8, seed=4)
    scale = 8 ** -0.5
    acc = OnlineMerge()
    acc.add(*partial_attention(q, k[:, :, :10], v[:, :, :10], scale))
    acc.add(*empty_partial(q))
    acc.add(*partial_attention(q[:, :, 5:], k[:, :, 10:], v[:, :, 10:], scale), q_slice=slice(5, 10))
    ref_first = reference_attention(q[:, :, :5], k[:, :, :10], v[:, :, :10], scale)
    ref_second = reference_attention(q[:, :, 5:], k, v, scale)
    assert torch.allclose(acc.out[:, :, :5].double(), ref_first, atol=1e-5)
    assert torch.allclose(acc.out[:, :, 5:].double(), ref_second, atol=1e-5)


def test_all_empty_parts_give_zero_not_nan():
    q, _, _ = qkv(1, 2, 2, 3, 1, 8)
    o, l = empty_partial(q)
    out, lse = merge_partials(torch.stack((o, o)), torch.stack((l, l)))
    assert torch.all(out == 0) and torch.all(torch.isinf(lse))


def test_pack_roundtrip():
    o, l = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4)
    o2, l2 = unpack(pack(o, l))
    assert torch.equal(o, o2) and torch.equal(l, l2)


def test_causal_needs_square():
    q, k, v = qkv(1, 2, 2, 3, 5, 8)
    with pytest.raises(ValueError, match="equal lengths"):
        partial_attention(q, k, v, 1.0, causal=True)
