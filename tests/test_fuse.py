"""Fused projections (models/fuse.py) against the stock model: the same logits in fp32 on the CPU (each output
element is the same dot product; tolerance 1e-5 absolute for a different GEMM tiling), no weight held twice,
nothing held between forwards, the stock modules back inside ``stock_projections``, and the worker's knob."""

import copy

import pytest
import torch

from star_runtime.attention.hooks import attention_state
from star_runtime.config import RunConfig
from star_runtime.models.fuse import FusedPart, SkinnyLinear, fuse_projections, stock_projections
from star_runtime.models.loader import load_model, resolve_model
from star_runtime.modes.block import CollectPrefill
from star_runtime.parallel.worker import Worker

CPU = torch.device("cpu")


def logits(model, ids):
    with torch.inference_mode(), attention_state(CollectPrefill(len(model.get_decoder().layers))):
        return model(input_ids=ids, use_cache=False).logits


def storages(model) -> int:
    return sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}.values())


@pytest.mark.parametrize("name,groups", [("random:tiny", 4), ("random:tiny-qwen2", 4), ("random:tiny-qwen3", 4),
                                         ("random:tiny-phi3", 0)])
def test_fused_equals_stock(name, groups):
    """Llama, Qwen2 (q/k/v biases), Qwen3 (q/k norms after the projections); Phi-3 fuses its own already."""
    stock = load_model(resolve_model(name), torch.float32, CPU)
    model = copy.deepcopy(stock)
    before = storages(model)
    assert fuse_projections(model) == groups
    ids = torch.randint(0, 1000, (2, 23), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(model, ids), logits(stock, ids), atol=1e-5, rtol=0)
    assert storages(model) == before  # the parts' weights are views of one tensor per group: nothing twice
    if groups:
        attn = model.get_decoder().layers[0].self_attn
        group = attn.q_proj._group
        assert group.x is None and group.outs == ()  # nothing held between forwards
        assert attn.k_proj.weight.data_ptr() == group.weight[attn.q_proj.out_features].data_ptr()
        if attn.q_proj.bias is not None:
            assert attn.v_proj.bias.data_ptr() == group.bias[-attn.v_proj.out_features].data_ptr()
        assert type(attn.o_proj) is SkinnyLinear  # the layer's other matmuls: the same module, another forward
        with stock_projections(model):
            assert type(attn.q_proj) is torch.nn.Linear and attn.q_proj.weight.data_ptr() == group.weight.data_ptr()
            assert type(attn.o_proj) is torch.nn.Linear
            torch.testing.assert_close(logits(model, ids), logits(stock, ids), atol=1e-5, rtol=0)
        assert isinstance(attn.q_proj, FusedPart)


def test_a_new_input_between_parts_is_recomputed():
    """A caller that hands a part a different input than the group saw gets that input's projection."""
    model = load_model(resolve_model("random:tiny"), torch.float32, CPU)
    stock = copy.deepcopy(model)
    fuse_projections(model)
    attn, ref = model.get_decoder().layers[0].self_attn, stock.get_decoder().layers[0].self_attn
    x, y = torch.randn(3, attn.q_proj.in_features), torch.randn(3, attn.q_proj.in_features)
    torch.testing.assert_close(attn.q_proj(x), ref.q_proj(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(attn.k_proj(y), ref.k_proj(y), atol=1e-6, rtol=0)
    torch.testing.assert_close(attn.v_proj(y), ref.v_proj(y), atol=1e-6, rtol=0)
    torch.testing.assert_close(attn.q_proj(y), ref.q_proj(y), atol=1e-6, rtol=0)


@pytest.mark.parametrize("unfused", [False, True])
def test_worker_fuses_unless_asked_not_to(unfused):
    cfg = RunConfig(model_path="random:tiny", device="cpu", dtype="float32", attn_type="dense",
                    unfused_projections=unfused).validate()
    worker = Worker(cfg, resolve_model(cfg.model_path), 0, 1)
    try:
        q = worker.model.get_decoder().layers[0].self_attn.q_proj
        assert isinstance(q, torch.nn.Linear) == unfused and isinstance(q, FusedPart) == (not unfused)
    finally:
        worker.close()
