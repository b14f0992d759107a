"""On the GPU (Hopper and newer): kernels launched with programmatic dependent launch (star_runtime/pdl.py) give
the bits of their serialized launches. Each consumer runs right after a producer that lets it launch at once
(``gdc_launch_dependents`` first) and writes the consumer's input only after a ~50 us spin, so a consumer that
read its input before ``gdc_wait`` would read the stale one: the skinny matmul (with and without its weight
prefetch, split or not), the page kernel with its merge (short and uneven pages), eagerly and replayed from a
CUDA graph whose producer writes new values before every replay."""

import sys

import pytest
import torch

from star_runtime import pdl
from star_runtime.models import skinny

sys.path.insert(0, "tests/helpers")
from paged_blocks import cached_blocks  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                                reason="programmatic dependent launch needs a Hopper or newer GPU")

_PRODUCER: dict = {}


def slow_scale(src: torch.Tensor, scale: torch.Tensor, out: torch.Tensor, ns: int = 50_000) -> None:
    """out = src * scale (scale: a 0-dim device tensor), written after a spin of ns nanoseconds; the next kernel
    may launch as soon as this one starts."""
    if "k" not in _PRODUCER:
        import triton
        import triton.language as tl

        @triton.jit
        def kernel(SRC, SCALE, OUT, n, NS: tl.constexpr, BLOCK: tl.constexpr):
            tl.extra.cuda.gdc_launch_dependents()
            t0 = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False,
                                           pack=1)
            now = t0
            while now - t0 < NS:
                now = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64,
                                                is_pure=False, pack=1)
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            m = i < n
            s = tl.load(SCALE).to(tl.float32)
            tl.store(OUT + i, (tl.load(SRC + i, mask=m).to(tl.float32) * s).to(OUT.dtype.element_ty), mask=m)

        _PRODUCER["k"] = kernel
    n = src.numel()
    _PRODUCER["k"][(-(-n // 1024),)](src, scale, out, n, NS=ns, BLOCK=1024)


def set_pdl(monkeypatch, on: bool, prefetch: int = 0):
    dev = torch.device("cuda", torch.cuda.current_device())
    monkeypatch.setattr(pdl, "_ON", {dev: on, "prefetch": prefetch})
    assert pdl.enabled(dev) == on


def replayed(run, scale, values):
    """run() captured in a CUDA graph (after one eager call), replayed once per value of scale: the outputs."""
    run()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    got = []
    for s in values:
        scale.fill_(s)
        graph.replay()
        torch.cuda.synchronize()
        got.append(tuple(t.clone() for t in (out if isinstance(out, tuple) else (out,))))
    return got


@pytest.mark.parametrize("prefetch", [0, 2048])
@pytest.mark.parametrize("c", [(32, 128, 1, 4, 6), (64, 128, 4, 4, 4)])
def test_skinny_after_its_producer(monkeypatch, prefetch, c):
    m, n, k = 50, 4096, 4096
    g = torch.Generator(device="cuda").manual_seed(1)
    src = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    x = torch.zeros_like(src)
    scale = torch.ones((), device="cuda", dtype=torch.float32)

    def chain():
        slow_scale(src, scale, x)
        return skinny.run(x, w, None, c)

    values = (1.0, -2.0, 1.0)
    set_pdl(monkeypatch, False)
    want = []
    for s in values:
        scale.fill_(s)
        want.append(chain().clone())
    set_pdl(monkeypatch, True, prefetch)
    for s, ref in zip(values, want):
        scale.fill_(s)
        x.zero_()
        assert torch.equal(chain(), ref)
    x.zero_()
    for (y,), ref in zip(replayed(chain, scale, values), want):
        assert torch.equal(y, ref)


def test_page_kernel_after_its_producer(monkeypatch):
    d = 128
    # short pages: the prefetch stays inside each entry
    *_, src, _, table = cached_blocks([300, 1000, 17, 512, 40], 2, d=d)
    q = torch.zeros_like(src)
    scale = torch.ones((), device="cuda", dtype=torch.float32)

    def chain():
        slow_scale(src, scale, q)
        return table.attend(1, q, d ** -0.5)

    values = (1.0, -0.5, 1.0)
    set_pdl(monkeypatch, False)
    want = []
    for s in values:
        scale.fill_(s)
        want.append(tuple(t.clone() for t in chain()))
    set_pdl(monkeypatch, True)
    for s, (ref_out, ref_lse) in zip(values, want):
        scale.fill_(s)
        q.zero_()
        out, lse = chain()
        assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    q.zero_()
    for (out, lse), (ref_out, ref_lse) in zip(replayed(chain, scale, values), want):
        assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
