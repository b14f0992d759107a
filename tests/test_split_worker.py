"""A worker over several GPUs: the decoder layers' weights split in order, attention and KV on the first.

The CPU cannot hold two devices, so here the split runs over [cpu, cpu] (the same dispatch and attention
tagging code); bench/check_gpu_paths.py compares a worker over 2 GPUs with one GPU on a GPU machine.
"""

import pytest
import torch

from conftest import assert_same_steps, make_engine, random_ids, run_ids
from star_runtime.attention.hooks import HOME_ATTR
from star_runtime.config import ConfigError, RunConfig
from star_runtime.models.loader import layer_device_map, load_model, resolve_model


def test_layer_map_splits_layers_in_order_rest_on_first():
    source = resolve_model("random:llama3-8b-2l")
    model = load_model(source, torch.float32, torch.device("meta"))
    d = [torch.device("cuda", 0), torch.device("cuda", 1)]
    dmap = layer_device_map(model, d)
    assert dmap["model.layers.0"] == "cuda:0" and dmap["model.layers.1"] == "cuda:1"
    assert {dmap[k] for k in ("model.embed_tokens", "model.norm", "model.rotary_emb", "lm_head")} == {"cuda:0"}
    params = {n.rsplit(".", 1)[0] for n, _ in model.named_parameters()}
    assert all(any(p == k or p.startswith(k + ".") for k in dmap) for p in params)  # every weight placed


def test_layer_runs_as_tensor_split():
    model = load_model(resolve_model("random:tiny"), torch.float32, torch.device("meta"))
    n = len(model.get_decoder().layers)
    d = [torch.device("cuda", i) for i in range(3)]
    dmap = layer_device_map(model, d)
    runs = [dmap[f"model.layers.{i}"] for i in range(n)]
    assert runs == sorted(runs) and runs[0] == "cuda:0"  # consecutive, earlier devices first


@pytest.mark.parametrize("mode", ["dense", "star"])
def test_split_model_generates_as_one_device(mode):
    ctx, query = random_ids(150, 3), random_ids(6, 4)
    with make_engine(attn_type=mode, block_size=40, decode="static") as eng:
        worker = eng.launcher.worker
        one = run_ids(eng, ctx, query, 8)
        cpu = torch.device("cpu")
        worker.model = load_model(worker.source, torch.float32, cpu, [cpu, cpu])
        assert all(getattr(layer.self_attn, HOME_ATTR) == cpu for layer in worker.model.get_decoder().layers)
        split = run_ids(eng, ctx, query, 8)
    assert split.tokens == one.tokens
    assert_same_steps(split.logits, one.logits, 1e-5)


@pytest.mark.parametrize("kw,message", [
    (dict(gpus_per_worker=0), "--gpus_per_worker must be >= 1"),
    (dict(gpus_per_worker=2), "it needs --device cuda"),
    (dict(gpus_per_worker=2, device="cuda", attn_type="block"), "use --gpus_per_worker 1 with --attn_type block"),
    (dict(gpus_per_worker=2, device="cuda", decode="graph"), "decodes with --decode static"),
])
def test_split_worker_settings_refused_with_one_line(kw, message):
    with pytest.raises(ConfigError, match=message.replace("-", r"\-")):
        RunConfig(**kw).validate()
