"""On the GPU: every partial-attention kernel (cuDNN, the default for half-precision prefill; flash, the default
for decode-sized queries; the memory-efficient kernel for fp32; the fp32 math reference) against fp64
attention and fp64 log-sum-exp, at Llama-3-8B head shapes (32 query heads, 8 KV heads, head dim 128)."""

import pytest
import torch

from star_runtime.attention.partial import (_cudnn, _efficient, _flash, _math, _pick_kernel, partial_attention,
                                            reference_attention)

SHAPES = [(512, 512, True), (77, 1000, False), (1, 4096, False), (1000, 1000, True), (300, 300, False)]
KERNELS = {torch.bfloat16: {"cudnn": _cudnn, "flash": _flash, "math": _math},
           torch.float32: {"efficient": _efficient, "math": _math}}
TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-4}  # bf16 inputs and outputs; fp32 end to end


def fp64_lse(q, k, causal):
    kk = k.repeat_interleave(q.shape[1] // k.shape[1], 1).double()
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), kk) * q.shape[-1] ** -0.5
    if causal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
    return torch.logsumexp(s, -1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("tq,tk,causal", SHAPES)
def test_kernels_match_fp64(dtype, tq, tk, causal):
    if causal and tq != tk:
        pytest.skip("square causal only")
    g = torch.Generator(device="cuda").manual_seed(tq + tk)
    q = torch.randn(2, 32, tq, 128, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(2, 8, tk, 128, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(2, 8, tk, 128, device="cuda", dtype=dtype, generator=g)
    ref, lse_ref = reference_attention(q, k, v, 128 ** -0.5, causal), fp64_lse(q, k, causal)
    for name, fn in KERNELS[dtype].items():
        o, lse = fn(q, k, v, 128 ** -0.5, causal)
        eo, el = (o.double() - ref).abs().max().item(), (lse.double() - lse_ref).abs().max().item()
        assert eo < TOL[dtype] and el < TOL[dtype], (name, eo, el)


def test_default_kernel_for_half_prefill_is_cudnn_and_exact():
    q = torch.randn(1, 32, 1024, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 8, 1024, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    assert _pick_kernel(q, True) == "cudnn" and _pick_kernel(q[:, :, :1], False) == "flash"
    o, lse = partial_attention(q, k, v, 128 ** -0.5, causal=True)
    ref = reference_attention(q, k, v, 128 ** -0.5, True)
    assert (o.double() - ref).abs().max().item() < 2e-2
    assert (lse.double() - fp64_lse(q, k, True)).abs().max().item() < 2e-2
