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
def test_kernel_matches_fp32(m, n, k):
    """The tuned configuration of the shape here, or (untuned: the dispatch takes torch's) a default one: the
    kernel itself runs either way; the dispatch gives the kernel's bits where tuned."""
    g = torch.Generator(device="cuda").manual_seed(m + n)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    c = skinny.config(m, n, k, x.device)
    y = skinny.run(x, w, None, c or (64, 128, 1, 4, 4))
    check(y, x, w)
    assert torch.equal(y, skinny.run(x, w, None, c or (64, 128, 1, 4, 4)))
    if c is not None:
        assert torch.equal(skinny.linear(x, w), y)
    else:
        assert torch.equal(skinny.linear(x, w), F.linear(x, w))


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


def test_fused_model_runs_its_matmuls_through_the_kernel(monkeypatch):
    """random:tiny's shapes given tiles (one with split input features): its logits, eager and in compiled
    layers (the custom op), against the stock model's; off again inside stock_projections."""
    from star_runtime.attention.hooks import attention_state
    from star_runtime.models.fuse import SkinnyLinear, fuse_projections, stock_projections
    from star_runtime.models.loader import load_model, resolve_model
    from star_runtime.modes.block import CollectPrefill

    from star_runtime.fused import compiled_layers

    model = load_model(resolve_model("random:tiny"), torch.bfloat16, torch.device("cuda"))
    cfg = model.config
    h, i = cfg.hidden_size, cfg.intermediate_size
    q = cfg.num_attention_heads * (h // cfg.num_attention_heads)
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    tiles = {(16, q + 2 * kv, h): (32, 64, 1, 4, 2), (16, h, q): (32, 64, 1, 4, 2), (16, 2 * i, h): (32, 64, 1, 4, 2),
             (16, h, i): (32, 64, i // 64, 4, 2)}
    monkeypatch.setitem(skinny._TUNED, torch.cuda.get_device_name(), tiles)
    calls = []
    real_run = skinny.run
    monkeypatch.setattr(skinny, "run", lambda *a: calls.append(a[3]) or real_run(*a))
    ids = torch.randint(0, 1000, (1, 9), device="cuda")
    with torch.inference_mode(), attention_state(CollectPrefill(len(model.get_decoder().layers))):
        stock = model(input_ids=ids, use_cache=False).logits.float()
        fuse_projections(model)
        assert isinstance(model.get_decoder().layers[0].self_attn.o_proj, SkinnyLinear)
        fused = model(input_ids=ids, use_cache=False).logits.float()
        assert set(calls) == set(tiles.values())  # every matmul of every layer took the kernel
        calls.clear()
        with compiled_layers(model, "compiled"):
            compiled = model(input_ids=ids, use_cache=False).logits.float()
        assert set(calls) == set(tiles.values())  # through the custom op inside the compiled layers
        calls.clear()
        with stock_projections(model):
            assert type(model.get_decoder().layers[0].self_attn.o_proj) is torch.nn.Linear
            model(input_ids=ids, use_cache=False)
        assert not calls
    for out in (fused, compiled):
        torch.testing.assert_close(out, stock, atol=0.05 * stock.abs().max().item(), rtol=0)
