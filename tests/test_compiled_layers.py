"""Prefill passes run the stock decoder layers through torch.compile (--prefill_layers; auto = on GPUs,
fused.compiled_layers): the runtime attention is still called eagerly, once per layer, and the KV a worker
stores equals the eager layers' (fp32, 1e-5). "compiled" on the CPU here; compiling takes about half a
minute."""

import torch

from conftest import random_ids
import pytest

from star_runtime import fused
from star_runtime.config import ConfigError, RunConfig
from star_runtime.attention import hooks
from star_runtime.modes.star import encode_star, star_plan
from test_star_anchor import FakeGroup, kv, model  # noqa: F401  (the module's model fixture)


def test_compiled_layers_store_the_eager_kv(model, monkeypatch):  # noqa: F811
    layers = model.config.num_hidden_layers
    ctx = torch.tensor(random_ids(150, 9))
    plan = star_plan(150, 32, 32, 2)  # rank 1 encodes blocks 3, 4 (the last short) with the anchor
    g0 = FakeGroup(0, 2)
    encode_star(model, ctx, plan, g0)
    eager = encode_star(model, ctx, plan, FakeGroup(1, 2, g0.sent))

    calls = []
    real_attend = hooks._runtime_attention
    decoder_layers = model.get_decoder().layers

    def counted(module, *args, **kwargs):
        layer = decoder_layers[module.layer_idx]
        compiled_forward = layer.__dict__.get(fused._COMPILED)
        installed = compiled_forward is not None and layer.__dict__.get("forward") is compiled_forward
        calls.append((module.layer_idx, installed))
        return real_attend(module, *args, **kwargs)

    monkeypatch.setattr(hooks, "_runtime_attention", torch.compiler.disable(counted))
    hooks.register()  # the interface now points at the counting wrapper
    from torch._dynamo.utils import counters

    traced = counters["stats"]["calls_captured"]
    try:
        compiled = encode_star(model, ctx, plan, FakeGroup(1, 2, g0.sent), prefill_layers="compiled")
    finally:
        monkeypatch.undo()
        hooks.register()
    # the attention ran eagerly, once per layer and forward, in order, called from the compiled layer forwards
    # (two forwards: full block 3, then the short block 4 at its own length)
    assert calls == [(i, True) for i in range(layers)] * 2
    assert counters["stats"]["calls_captured"] > traced
    assert all("forward" not in layer.__dict__ for layer in model.get_decoder().layers)  # eager again after
    for c, e in zip(kv(compiled, layers), kv(eager, layers)):
        assert c.shape == e.shape == (2, 2, 150 - 96, 16)
        assert torch.allclose(c, e, atol=1e-5), (c - e).abs().max()


@pytest.mark.parametrize("mode", ["auto", "eager"])
def test_cpu_runs_eager_unless_compiled_is_asked_for(model, mode):  # noqa: F811
    with fused.compiled_layers(model, mode):
        assert all("forward" not in layer.__dict__ for layer in model.get_decoder().layers)


def test_unknown_prefill_layers_is_refused():
    with pytest.raises(ConfigError, match="--prefill_layers"):
        RunConfig(prefill_layers="fast").validate()


def test_layers_with_wrapped_forwards_stay_as_they_are(model):  # noqa: F811
    """A split worker's layers carry accelerate's forward on the instance: they run eagerly, hooks kept."""
    layer = model.get_decoder().layers[0]
    wrapped = layer.forward
    layer.__dict__["forward"] = wrapped
    try:
        with fused.compiled_layers(model, "compiled"):
            assert layer.__dict__["forward"] is wrapped
            assert all("forward" not in other.__dict__ for other in model.get_decoder().layers[1:])
        assert layer.__dict__["forward"] is wrapped
    finally:
        del layer.__dict__["forward"]
