"""On the GPU: every partial-attention kernel against fp64 reference math (shapes of Llama-3-8B heads)."""

import sys, os

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from star_runtime.attention.partial import _efficient, _flash, _math, reference_attention  # noqa: E402

torch.manual_seed(0)
worst = {}
for dtype, kernels in [(torch.bfloat16, {"flash": _flash, "math": _math}), (torch.float32, {"efficient": _efficient, "math": _math})]:
    for tq, tk, causal in [(512, 512, True), (77, 1000, False), (1, 4096, False), (1000, 1000, True)]:
        q = torch.randn(2, 32, tq, 128, device="cuda", dtype=dtype)
        k = torch.randn(2, 8, tk, 128, device="cuda", dtype=dtype)
        v = torch.randn(2, 8, tk, 128, device="cuda", dtype=dtype)
        ref = reference_attention(q, k, v, 128 ** -0.5, causal)
        kk = k.repeat_interleave(4, 1).double()
        s = torch.einsum("bhqd,bhkd->bhqk", q.double(), kk) * 128 ** -0.5
        if causal:
            s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
        lse_ref = torch.logsumexp(s, -1)
        for name, fn in kernels.items():
            o, l = fn(q, k, v, 128 ** -0.5, causal)
            eo = (o.double() - ref).abs().max().item()
            el = (l.double() - lse_ref).abs().max().item()
            print(f"{str(dtype):15} {name:9} tq={tq:5} tk={tk:5} causal={causal!s:5} out err {eo:.2e} lse err {el:.2e}")
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
            assert eo < tol and el < tol, (name, eo, el)
print("GPU kernels OK")
