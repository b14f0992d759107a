"""On the GPU (Hopper and newer): kernels launched with programmatic dependent launch (star_runtime/pdl.py) give
the bits of their serialized launches -- the skinny matmul (with and without its weight prefetch, split or not)
right after the kernel that writes its input, and the split merge right after the split kernel, eagerly and
replayed from a CUDA graph where the producer writes new values before every replay."""

import pytest
import torch

from star_runtime import pdl
from star_runtime.attention.split_kv import split_kv_attention
from star_runtime.models import skinny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                                reason="programmatic dependent launch needs a Hopper or newer GPU")


def pdl_on(monkeypatch, prefetch: int):
    dev = torch.device("cuda", torch.cuda.current_device())
    monkeypatch.setattr(pdl, "_ON", {dev: True, "prefetch": prefetch})


@pytest.mark.parametrize("prefetch", [0, 2048])
@pytest.mark.parametrize("c", [(32, 128, 1, 4, 6), (64, 128, 4, 4, 4)])
def test_skinny_after_its_producer(monkeypatch, prefetch, c):
    m, n, k = 50, 4096, 4096
    g = torch.Generator(device="cuda").manual_seed(1)
    src = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    x = torch.empty_like(src)

    def chain(scale):  # a kernel writes the input, the matmul reads it at once: a missing wait reads stale x
        torch.mul(src, scale, out=x)
        return skinny.run(x, w, None, c)

    want = [chain(s).clone() for s in (1.0, -2.0)]
    pdl_on(monkeypatch, prefetch)
    assert pdl.enabled(x.device)
    for s, ref in zip((1.0, -2.0), want):
        assert torch.equal(chain(s), ref)
    scale = torch.ones((), device="cuda", dtype=torch.bfloat16)
    x.zero_()
    graph = torch.cuda.CUDAGraph()
    chain(1.0)  # compiled before the capture
    with torch.cuda.graph(graph):
        torch.mul(src, scale, out=x)
        y = skinny.run(x, w, None, c)
    for s, ref in zip((1.0, -2.0, 1.0), want + want[:1]):
        scale.fill_(s)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, ref)


def test_merge_after_the_split_kernel(monkeypatch):
    g = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(1, 32, 50, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 8192, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, 8192, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    base = torch.tensor([8000], dtype=torch.int32, device="cuda")
    out, lse = split_kv_attention(q, k, v, base, 128 ** -0.5)
    pdl_on(monkeypatch, 0)
    for _ in range(3):
        o2, l2 = split_kv_attention(q, k, v, base, 128 ** -0.5)
        assert torch.equal(o2, out) and torch.equal(l2, lse)
