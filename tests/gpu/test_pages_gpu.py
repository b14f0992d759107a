"""On the GPU: attention over cached blocks in place (attention/pages.py) at Llama-3-8B head shapes in bf16
against fp64 attention over the same stored keys rotated to their target positions, next to the gather path it
replaces (gather_rotate + the split-KV kernel); and a worker's first token through it -- uncaptured, then
replayed from its CUDA graph over other requests' pages -- against the gather path (two layers of Llama-3-8B's
shape, bf16)."""

import sys

import pytest
import torch

from star_runtime.attention.split_kv import split_kv_attention
from star_runtime.config import RunConfig
from star_runtime.kv.block_store import block_key
from star_runtime.kv.gather import gather_rotate
from star_runtime.models.loader import resolve_model
from star_runtime.modes.block import BlockSpec
from star_runtime.parallel.worker import Request, Worker

sys.path.insert(0, "tests/helpers")
from paged_blocks import cached_blocks  # noqa: E402


def rope(x, pos, inv):
    """x (..., n, D) rotated to positions pos (n,), pairs (i, i + D/2), fp64."""
    ang = pos.double()[:, None] * inv.double()[None]
    c, s = torch.cos(ang), torch.sin(ang)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h].double(), x[..., h:].double()
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1)


@pytest.mark.parametrize("lens", [[512] * 64, [300, 1000, 17, 4096, 512]])
def test_paged_kernel_at_model_shapes_against_fp64_and_the_gather_path(lens):
    layers, hkv, d, hq, t, tb = 2, 8, 128, 32, 50, 64
    entries, offs, L, own, q, inv, table = cached_blocks(lens, len(lens), layers, hkv, d, hq, tb)
    # the gather path: keys re-encoded into the rows, then the split kernel over rows [0, L + t)
    ang = torch.cat([torch.arange(o, o + n, device="cuda") for o, n in zip(offs, lens)]).double()[:, None] * inv
    rows = own.clone()
    gather_rotate(entries, rows, torch.cos(ang).float(), torch.sin(ang).float())
    for layer in range(layers):
        # stored keys are at 0..n-1 already; rotate them by the offset only
        k = torch.cat([rope(e[layer, 0].double(), torch.full((n,), o, device="cuda"), inv)
                       for e, o, n in zip(entries, offs, lens)] + [own[layer, 0, L:L + tb].transpose(0, 1).double()], 1)
        v = torch.cat([e[layer, 1].double() for e in entries] + [own[layer, 1, L:L + tb].transpose(0, 1).double()], 1)
        k, v = k.repeat_interleave(hq // hkv, 0), v.repeat_interleave(hq // hkv, 0)
        s = torch.einsum("htd,hcd->htc", q[0].double(), k) * d ** -0.5
        lim = L + torch.arange(tb, device="cuda") + 1
        s = s.masked_fill(~(torch.arange(L + tb, device="cuda")[None] < lim[:, None])[None], float("-inf"))
        ref, ref_lse = torch.einsum("htc,hcd->htd", torch.softmax(s, -1), v), torch.logsumexp(s, -1)
        out, lse = table.attend(layer, q, d ** -0.5)
        gout, glse = split_kv_attention(q, rows[layer, 0].unsqueeze(0), rows[layer, 1].unsqueeze(0),
                                        torch.tensor([L], device="cuda"), d ** -0.5)
        err = (out[0, :, :t].double() - ref[:, :t]).abs().max().item()
        gerr = (gout[0, :, :t].double() - ref[:, :t]).abs().max().item()
        lerr = (lse[0, :, :t].double() - ref_lse[:, :t]).abs().max().item()
        assert err < 2e-2 and lerr < 2e-2, (err, lerr)
        assert err < 2 * gerr + 2e-3, (err, gerr)  # no worse than the path it replaces
        glerr = (glse[0, :, :t].double() - ref_lse[:, :t]).abs().max().item()
        assert lerr < 2 * glerr + 2e-3, (lerr, glerr)


def test_first_token_in_place_replayed_over_other_requests_equals_the_gather_path():
    model = "random:llama3-8b-2l"
    cfg = RunConfig(model_path=model, attn_type="block", device="cuda", dtype="bfloat16", ignore_eos=True,
                    decode="graph", block_cache_gpu_gib=4.0).validate()
    w = Worker(cfg, resolve_model(model), 0, 1)
    try:
        g = torch.Generator().manual_seed(0)
        passages = [torch.randint(100, 30000, (n,), generator=g).tolist() for n in [512] * 12 + [300, 77]]
        final = torch.randint(100, 30000, (50,), generator=g).tolist()

        def req(order, i):
            specs, off = [], 0
            for j in order:
                specs.append(BlockSpec(block_key("m", passages[j]), tuple(passages[j]), off, 0))
                off += len(passages[j])
            return Request(i, [t for s in specs for t in s.ids], final, 4, mode="block", blocks=specs,
                           keep_logits=True)

        orders = [list(range(14)), list(range(13, -1, -1)), [5, 13, 1, 12, 0, 2, 3, 4, 6, 7, 8, 9, 10, 11]]
        cold = w.run_batch([req(orders[0], 0)])[0]  # every passage encoded; the bucket's first call: uncaptured
        paged = [w.run_batch([req(o, i)])[0] for i, o in enumerate(orders + orders[:1])]  # captured, replayed
        assert cold.cache["misses"] == 14 and cold.tokens == paged[0].tokens
        assert (cold.logits[0] - paged[0].logits[0]).abs().max().item() < 1e-3
        assert w.arenas.steps  # the in-place path ran (its query prefill steps)
        assert paged[-1].tokens == paged[0].tokens  # the replay over the first request's pages again
        assert (paged[-1].logits[0] - paged[0].logits[0]).abs().max().item() < 1e-3
        w.defers_context = lambda: False  # the gather path for the same requests
        gathered = [w.run_batch([req(o, i)])[0] for i, o in enumerate(orders)]
        for p, q in zip(paged, gathered):
            assert all(c["misses"] == 0 for c in [p.cache, q.cache])
            diff = (p.logits[0] - q.logits[0]).abs().max().item()
            assert diff < 0.1, diff  # bf16: the rotation rounds on the query instead of the keys
            assert p.logits[0].argmax() == q.logits[0].argmax()
            # the decode steps after it read the query's KV from the arena (the step wrote it there): the same
            # logits as the gathered path's while both chose the same tokens
            assert len(p.logits) == 4
            for step, (a, b) in enumerate(zip(p.logits[1:], q.logits[1:])):
                if p.tokens[:step + 1] != q.tokens[:step + 1]:
                    break
                assert (a - b).abs().max().item() < 0.1, step
    finally:
        w.close()
