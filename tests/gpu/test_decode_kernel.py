"""On the GPU: the static-decode and query-prefill kernels (the split-KV Triton kernel, and flash in its
varlen form; lengths on the device) against fp64 attention and the fp32 masked math they replace, bf16 at
Llama-3-8B head shapes, rows of different lengths; and captured in a CUDA graph, a changed length is honoured
on replay."""

import pytest
import torch

import star_runtime.attention.partial as partial
from star_runtime.attention.partial import decode_partial, masked_partial


@pytest.fixture(autouse=True, params=["split", "flash"])
def kernel(request, monkeypatch):
    """Every test twice: the split-KV kernel (the default) and the varlen flash kernel."""
    monkeypatch.setattr(partial, "_KERNEL", request.param)
    yield request.param
    assert partial._SPLIT_OK["ok"], "the split-KV kernel failed and was switched off"


def rows(a=5, c=3000, hq=32, hkv=8, d=128, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(a, hq, 1, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(a, c, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(a, c, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
    used = torch.tensor([c, 1, 777, 2048, c - 5][:a], dtype=torch.int32, device="cuda")
    return q, k, v, used, torch.arange(c, device="cuda")


def fp64(q, k, v, used, scale):
    outs, lses = [], []
    for i in range(q.shape[0]):
        n = int(used[i])
        kk = k[i, :n].transpose(0, 1).double().repeat_interleave(q.shape[1] // k.shape[2], 0)  # (Hq, n, D)
        vv = v[i, :n].transpose(0, 1).double().repeat_interleave(q.shape[1] // k.shape[2], 0)
        s = torch.einsum("hd,hnd->hn", q[i, :, 0].double(), kk) * scale
        outs.append(torch.einsum("hn,hnd->hd", torch.softmax(s, -1), vv))
        lses.append(torch.logsumexp(s, -1))
    return torch.stack(outs).unsqueeze(2), torch.stack(lses).unsqueeze(2)


def test_varlen_decode_matches_fp64_and_the_masked_math():
    q, k, v, used, slots = rows()
    scale = 128 ** -0.5
    out, lse = decode_partial(q, k, v, used, slots, scale)
    ref_out, ref_lse = fp64(q, k, v, used, scale)
    assert out.shape == (5, 32, 1, 128) and lse.shape == (5, 32, 1)
    assert (out.double() - ref_out).abs().max().item() < 2e-2
    assert (lse.double() - ref_lse).abs().max().item() < 2e-2
    valid = (slots[None, :] < used[:, None])[:, None, None, None, :]
    m_out, m_lse = masked_partial(q, k.transpose(1, 2), v.transpose(1, 2), scale, valid)
    assert (out - m_out).abs().max().item() < 2e-2 and (lse - m_lse).abs().max().item() < 2e-2


def test_varlen_decode_replays_in_a_cuda_graph_with_new_lengths():
    q, k, v, used, slots = rows(seed=1)
    scale = 128 ** -0.5
    decode_partial(q, k, v, used, slots, scale)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = decode_partial(q, k, v, used, slots, scale)
    used.copy_(torch.tensor([10, 2999, 5, 1, 1500], dtype=torch.int32))
    graph.replay()
    ref_out, ref_lse = fp64(q, k, v, used, scale)
    assert (out.double() - ref_out).abs().max().item() < 2e-2
    assert (lse.double() - ref_lse).abs().max().item() < 2e-2


def test_varlen_prefill_is_causal_over_context_and_query():
    """The query's T real tokens (padded to Tb) over [context ; query]: token i sees the context and the query
    tokens up to itself; against fp64 and the masked math."""
    from star_runtime.attention.partial import prefill_partial

    g = torch.Generator(device="cuda").manual_seed(3)
    c, tb, t, ctx = 4096, 64, 50, 3000
    q = torch.randn(1, 32, tb, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, c, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, c, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    used = torch.tensor([ctx + t], dtype=torch.int32, device="cuda")
    cu_q = torch.tensor([0, t], dtype=torch.int32, device="cuda")
    slots = torch.arange(c, device="cuda")
    scale = 128 ** -0.5
    out, lse = prefill_partial(q, k, v, used, cu_q, slots, scale)
    kk = k[0, : ctx + t].transpose(0, 1).double().repeat_interleave(4, 0)  # (32, n, D)
    vv = v[0, : ctx + t].transpose(0, 1).double().repeat_interleave(4, 0)
    s = torch.einsum("htd,hnd->htn", q[0, :, :t].double(), kk) * scale
    mask = torch.arange(ctx + t, device="cuda")[None, :] > (ctx + torch.arange(t, device="cuda"))[:, None]
    s = s.masked_fill(mask[None], float("-inf"))
    ref = torch.einsum("htn,hnd->htd", torch.softmax(s, -1), vv)
    assert (out[0, :, :t].double() - ref).abs().max().item() < 2e-2
    assert (lse[0, :, :t].double() - torch.logsumexp(s, -1)).abs().max().item() < 2e-2
    limit = used.long() - t + torch.arange(tb, device="cuda") + 1
    valid = (slots[None, :] < limit[:, None])[None, None, None]
    m_out, _ = partial.masked_partial(q, k.transpose(1, 2), v.transpose(1, 2), scale, valid)
    assert (out[0, :, :t] - m_out[0, :, :t]).abs().max().item() < 2e-2


@pytest.mark.parametrize("hq,hkv,d,tb,ctx", [(32, 8, 128, 1, 131072), (28, 4, 64, 16, 5000), (8, 8, 128, 64, 77),
                                             (12, 4, 64, 33, 0)])
def test_split_kv_kernel_against_fp64(hq, hkv, d, tb, ctx):
    """The split-KV kernel alone, head shapes of several families (GQA 4 and 7, MHA), a query of 1..64
    tokens after a context of 0..128K, forced and chosen split counts."""
    from star_runtime.attention.split_kv import split_kv_attention

    g = torch.Generator(device="cuda").manual_seed(hq + tb)
    c = ctx + tb + 40
    q = torch.randn(1, hq, tb, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, c, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, c, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
    base = torch.tensor([ctx], dtype=torch.int32, device="cuda")
    kk = k[0, : ctx + tb].transpose(0, 1).double().repeat_interleave(hq // hkv, 0)
    vv = v[0, : ctx + tb].transpose(0, 1).double().repeat_interleave(hq // hkv, 0)
    s = torch.einsum("htd,hnd->htn", q[0].double(), kk) * d ** -0.5
    mask = torch.arange(ctx + tb, device="cuda")[None, :] > (ctx + torch.arange(tb, device="cuda"))[:, None]
    s = s.masked_fill(mask[None], float("-inf"))
    ref, ref_lse = torch.einsum("htn,hnd->htd", torch.softmax(s, -1), vv), torch.logsumexp(s, -1)
    for splits in (None, 1, 3):
        out, lse = split_kv_attention(q, k, v, base, d ** -0.5, splits=splits, fp32_out=True)
        assert (out[0].double() - ref).abs().max().item() < 2e-2, splits
        assert (lse[0].double() - ref_lse).abs().max().item() < 2e-2, splits


@pytest.mark.parametrize("t", [1, 50, 65])
def test_rows_partial_reads_a_token_major_shard_in_place_as_fp64(t, kernel):
    """A context shard in token-major rows (kv/shard.py in_rows) read by the eager decode / batch query path:
    the split kernel in place for short queries, head-major flash beyond 64 tokens or when flash is forced."""
    from star_runtime.attention.partial import rows_partial, reference_attention

    g = torch.Generator(device="cuda").manual_seed(t)
    n, cap = 5000, 6144
    buf = torch.randn(2, cap, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    q = torch.randn(1, 32, t, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    kr, vr = buf[0, :n].unsqueeze(0), buf[1, :n].unsqueeze(0)
    out, lse = rows_partial(q, kr, vr, torch.tensor([n], dtype=torch.int32, device="cuda"), 128 ** -0.5)
    ref = reference_attention(q, kr.transpose(1, 2), vr.transpose(1, 2), 128 ** -0.5)
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), kr.transpose(1, 2).double().repeat_interleave(4, 1))
    assert out.shape == (1, 32, t, 128) and lse.shape == (1, 32, t)
    assert (out.double() - ref).abs().max().item() < 2e-2
    assert (lse.double() - torch.logsumexp(s * 128 ** -0.5, -1)).abs().max().item() < 2e-2
