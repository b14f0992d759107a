"""On the GPU: the skinny matmul kernel (models/skinny.py) at Llama-3-8B's linear shapes, bf16, against an fp32
matmul of the same inputs (tolerance: 2 bf16 ulps of the output's scale), with the configuration the dispatch
picks here and with forced input-feature splits; the same bits on every call and from a CUDA-graph replay; a
fused model's layers through it."""

import pytest
import torch
import torch.nn.functional as F

from star_runtime.models import skinny

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]  # qkv, o, gate_up, down


def check(y, x, w):
    ref = x.float() @ w.float().T
    err = (y.float() - ref).abs().max().item()
    assert err <= 2 * ref.abs().max().item() * 2 ** -8, err


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", [1, 16, 50, 64])
def test_dispatch_matches_fp32(m, n, k):
    g = torch.Generator(device="cuda").manual_seed(m + n)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    y = skinny.linear(x, w)
    check(y, x, w)
    assert torch.equal(y, skinny.linear(x, w))


@pytest.mark.parametrize("c", [(64, 128, 1, 4, 4), (64, 64, 4, 4, 3), (32, 128, 8, 4, 4), (128, 64, 2, 8, 3)])
def test_splits_deterministic_and_replayed(c):
    m, n, k = 50, 4096, 4096
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    y = skinny.run(x, w, b, c)
    ref = F.linear(x.float(), w.float(), b.float())
    assert (y.float() - ref).abs().max().item() <= 2 * ref.abs().max().item() * 2 ** -8
    for _ in range(3):
        assert torch.equal(y, skinny.run(x, w, b, c))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = skinny.run(x, w, b, c)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, y)
    for _, cnt in skinny._WORK.values():
        assert int(cnt.abs().sum()) == 0


def test_fused_model_swaps_its_other_matmuls_to_the_kernel():
    from star_runtime.attention.hooks import attention_state
    from star_runtime.models.fuse import SkinnyLinear, fuse_projections, stock_projections
    from star_runtime.models.loader import load_model, resolve_model
    from star_runtime.modes.block import CollectPrefill

    model = load_model(resolve_model("random:tiny"), torch.bfloat16, torch.device("cuda"))
    ids = torch.randint(0, 1000, (1, 9), device="cuda")
    with torch.inference_mode(), attention_state(CollectPrefill(len(model.get_decoder().layers))):
        stock = model(input_ids=ids, use_cache=False).logits.float()
        fuse_projections(model)
        assert isinstance(model.get_decoder().layers[0].self_attn.o_proj, SkinnyLinear)
        fused = model(input_ids=ids, use_cache=False).logits.float()
        with stock_projections(model):
            assert type(model.get_decoder().layers[0].self_attn.o_proj) is torch.nn.Linear
    torch.testing.assert_close(fused, stock, atol=0.05 * stock.abs().max().item(), rtol=0)
