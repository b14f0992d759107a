"""Attention over cached blocks in place (attention/pages.py): the query rotated by minus each block's offset
over the keys as stored (at positions 0..n-1) against fp64 attention over keys computed at their target
positions -- the kernel through Triton's interpreter and the torch form, blocks longer than a page, uneven
blocks, GQA groups of 2 and 3, unused pages, a padded query. The GPU twin (tests/gpu/test_pages_gpu.py) runs the
compiled kernel at Llama-3-8B shapes in bf16."""

import pytest
import torch

from star_runtime.attention.pages import CHUNK, PageTable, capacity_bucket, pages_needed, rotate_query

from test_split_kv import HEADER, run_interpreted

SETUP = r"""
import torch
from star_runtime.attention.pages import PageTable, pages_needed

def rope(x, pos, inv):
    # x (..., n, D) rotated to positions pos (n,), pairs (i, i + D/2), in fp64
    ang = pos.double()[:, None] * inv.double()[None]
    c, s = torch.cos(ang), torch.sin(ang)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h].double(), x[..., h:].double()
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1)

def case(lens, hq, hkv, d, t, tb, layers=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).double() / d))
    offs, o = [], 0
    for n in lens:
        offs.append(o)
        o += n
    L = o
    raw_k = [torch.randn(layers, hkv, n, d, generator=g, dtype=torch.float64) for n in lens]
    vals = [torch.randn(layers, hkv, n, d, generator=g, dtype=torch.float64) for n in lens]
    # stored entries: keys at 0..n-1 (how the block was encoded alone)
    entries = [torch.stack((rope(k, torch.arange(n), inv), v), 1).float().contiguous()
               for k, v, n in zip(raw_k, vals, lens)]
    cap = L + tb + 8
    own = torch.zeros(layers, 2, cap, hkv, d)
    ok = torch.randn(layers, hkv, tb, d, generator=g, dtype=torch.float64)
    ov = torch.randn(layers, hkv, tb, d, generator=g, dtype=torch.float64)
    own[:, 0, L:L + tb] = rope(ok, torch.arange(L, L + tb), inv).float().transpose(1, 2)
    own[:, 1, L:L + tb] = ov.float().transpose(1, 2)
    q = rope(torch.randn(1, hq, tb, d, generator=g, dtype=torch.float64), torch.arange(L, L + tb), inv).float()
    # the reference: every key at its place in the prompt, fp64
    refs = []
    for layer in range(layers):
        k = torch.cat([rope(rk[layer], torch.arange(o, o + n), inv) for rk, o, n in zip(raw_k, offs, lens)]
                      + [rope(ok[layer], torch.arange(L, L + tb), inv)], 1)  # (hkv, L + tb, d)
        v = torch.cat([vv[layer] for vv in vals] + [ov[layer]], 1)
        k, v = k.repeat_interleave(hq // hkv, 0), v.repeat_interleave(hq // hkv, 0)
        s = torch.einsum("htd,hcd->htc", q[0].double(), k) * d ** -0.5
        lim = L + torch.arange(tb) + 1
        s = s.masked_fill(~(torch.arange(L + tb)[None] < lim[:, None])[None], float("-inf"))
        lse = torch.logsumexp(s, -1)
        refs.append((torch.einsum("htc,hcd->htd", torch.softmax(s, -1), v), lse))
    return entries, offs, inv.float(), own, L, q, refs

CASES = [([300, 40, 512], 4, 2, 32, 5, 16), ([17], 6, 2, 32, 1, 1), ([100, 260, 7, 64], 6, 2, 64, 13, 16)]

def check(kernel):
    for i, (lens, hq, hkv, d, t, tb) in enumerate(CASES):
        entries, offs, inv, own, L, q, refs = case(lens, hq, hkv, d, t, tb, seed=i)
        chunk = 128 if i == 0 else 512  # the first case: blocks of several pages
        table = PageTable(2 * pages_needed(lens, chunk), hkv, d // 2, "cpu", kernel=kernel, chunk=chunk)  # + unused
        table.fill(entries, offs, inv, own, L, tb)
        for layer, (ref, ref_lse) in enumerate(refs):
            out, lse = table.attend(layer, q, d ** -0.5)
            if kernel:  # a kernel failure falls back to the (exact) torch form: that must not pass for the kernel
                import star_runtime.attention.pages as pages
                assert pages._OK["ok"], "the page kernel failed and the torch form answered"
            assert out.shape == q.shape and lse.shape == q.shape[:3]
            err = (out[0, :, :t].double() - ref[:, :t]).abs().max().item()
            lerr = (lse[0, :, :t].double() - ref_lse[:, :t]).abs().max().item()
            assert err < 2e-5 and lerr < 2e-5, (lens, layer, err, lerr)
        print("ok", lens, f"{err:.1e}", f"{lerr:.1e}")
"""


def test_paged_kernel_against_keys_at_their_target_positions_in_the_interpreter():
    run_interpreted(HEADER + SETUP + "\ncheck(kernel=True)\n", 3)


REFILL = r"""
# one table refilled request after request (the table remembers each entry's pages and uploads the pages' angles
# only when the offsets change): blocks in another order, other lengths, then the first request again
table = PageTable(16, 2, 16, "cpu", kernel=True)
for seed, lens in enumerate([[40, 70, 33], [70, 33, 40], [100, 9], [40, 70, 33]]):
    entries, offs, inv, own, L, q, refs = case(lens, 4, 2, 32, 3, 16, layers=1, seed=seed % 3)
    table.fill(entries, offs, inv, own, L, 16)
    out, lse = table.attend(0, q, 32 ** -0.5)
    import star_runtime.attention.pages as pages
    assert pages._OK["ok"]
    err = (out[0, :, :3].double() - refs[0][0][:, :3]).abs().max().item()
    assert err < 2e-5, (lens, err)
    print("ok", lens, f"{err:.1e}")
"""


def test_a_table_refilled_for_other_requests_in_the_interpreter():
    run_interpreted(HEADER + SETUP + REFILL, 4)


def test_torch_form_against_keys_at_their_target_positions():
    scope: dict = {}
    exec(SETUP, scope)  # noqa: S102 -- the same cases as the kernel's script, in this process
    scope["check"](kernel=False)


def test_rotate_query_inverts_a_rotation():
    """rotate_query by angles a undoes RoPE's rotation by a (pairs (i, i + D/2))."""
    torch.manual_seed(0)
    x = torch.randn(3, 32, dtype=torch.float64)
    a = torch.rand(16, dtype=torch.float64) * 7
    c, s = torch.cos(a), torch.sin(a)
    x1, x2 = x[:, :16], x[:, 16:]
    rotated = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1)
    assert torch.allclose(rotate_query(rotated, c, s), x, atol=1e-12)


def test_page_counts_and_buckets():
    assert pages_needed([CHUNK, CHUNK + 1, 1]) == 1 + 2 + 1 + 1
    assert capacity_bucket(3) == 16 and capacity_bucket(17) == 32 and capacity_bucket(64) == 64
    table = PageTable(4, 2, 16, "cpu", kernel=False)
    with pytest.raises(ValueError, match="pages for a table of 4"):
        table.fill([torch.zeros(1, 2, 2, 3 * CHUNK + 1, 32)], [0], torch.ones(16), torch.zeros(1, 2, 8, 2, 32), 0, 1)


def test_a_table_filled_for_the_kernel_serves_the_torch_form_after_a_kernel_failure(monkeypatch):
    """After a kernel failure (pages._OK off) a table filled for the kernel answers through the torch form,
    the same numbers as a table filled for the torch form."""
    import star_runtime.attention.pages as pages

    scope: dict = {}
    exec(SETUP, scope)  # noqa: S102
    entries, offs, inv, own, L, q, refs = scope["case"]([300, 40], 4, 2, 32, 5, 16)
    monkeypatch.setitem(pages._OK, "ok", False)
    tables = []
    for kernel in (True, False):
        table = PageTable(16, 2, 16, "cpu", kernel=kernel)
        table.fill(entries, offs, inv, own, L, 16)
        tables.append(table)
    for layer, (ref, _) in enumerate(refs):
        out, lse = tables[0].attend(layer, q, 32 ** -0.5)
        out2, lse2 = tables[1].attend(layer, q, 32 ** -0.5)
        assert torch.equal(out, out2) and torch.equal(lse, lse2)
        assert (out[0, :, :5].double() - ref[:, :5]).abs().max() < 2e-5


def test_the_kernels_table_refuses_entries_it_cannot_read_in_place():
    """The kernel reads entries as contiguous, 16-byte aligned tensors of the rows' dtype: the table names the
    problem (the block store keeps its entries so), also for a tensor at an address it met before."""
    own = torch.zeros(1, 2, 64, 2, 16)
    store = torch.zeros(2, 1, 2, 2, 40, 16)
    good = store[0]
    table = PageTable(16, 2, 8, "cpu", kernel=True)
    table.fill([good], [0], torch.ones(8), own, 40, 8)
    strided = store.as_strided(good.shape, good.stride()[:3] + (1, 40))  # the same address and length
    assert strided.data_ptr() == good.data_ptr() and not strided.is_contiguous()
    with pytest.raises(ValueError, match="contiguous"):
        table.fill([strided], [0], torch.ones(8), own, 40, 8)
    with pytest.raises(ValueError, match="dtype"):  # the same address and length, another dtype of that size
        table.fill([store.view(torch.int32)[0]], [0], torch.ones(8), own, 40, 8)
    with pytest.raises(ValueError, match="16-byte"):
        table.fill([store.view(-1)[1:1 + good.numel()].view(good.shape)], [0], torch.ones(8), own, 40, 8)
    with pytest.raises(ValueError, match="pages for a table of 16"):
        table.fill([good] * 16, [40 * i for i in range(16)], torch.ones(8), own, 40, 8)
