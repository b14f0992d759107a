"""On the GPU (fp32, two layers of Llama-3-8B's shape): decode eager == static == CUDA graph; star with one
block == dense; prefill through compiled decoder layers == eager layers; a worker split over 2 GPUs == one
GPU (with 2 GPUs); over every visible GPU under torchrun: graph == eager decode for ring and star, star with
the anchor broadcast over NCCL == star on one GPU, ring == dense (tests/helpers/gpu_ranks.py). Tokens
identical, logits within 1e-3 (fp32 with TF32 off; kernels differ between the paths)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import GPUS
from star_runtime.config import RunConfig
from star_runtime.models.loader import resolve_model
from star_runtime.parallel.worker import Options, Request, Worker

ROOT = Path(__file__).resolve().parents[2]
MODEL = "random:llama3-8b-2l"
ATOL = 1e-3


def cases():
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(100, 30000, (n,), generator=g).tolist(), torch.randint(100, 30000, (q,), generator=g).tolist())
            for n, q in [(3000, 40), (1500, 7), (2500, 1)]]


def run(worker, mode, decode, cs, n):
    reqs = [Request(i, c, q, n + i, mode=mode, keep_logits=True) for i, (c, q) in enumerate(cs)]
    return worker.run_batch(reqs, Options(block_size=700 if mode == "star" else None, decode=decode))


def same(a, b):
    for x, y in zip(a, b):
        assert x.tokens == y.tokens
        assert len(x.logits) == len(y.logits) > 0
        diff = max((p - q).abs().max().item() for p, q in zip(x.logits, y.logits))
        assert diff <= ATOL, diff


@pytest.fixture(scope="module")
def worker():
    cfg = RunConfig(model_path=MODEL, attn_type="dense", device="cuda", dtype="float32", ignore_eos=True)
    w = Worker(cfg, resolve_model(MODEL), 0, 1)
    yield w
    w.close()


@pytest.mark.parametrize("decode", ["static", "graph"])
def test_fixed_shape_decode_equals_eager(worker, decode):
    cs = cases()
    same(run(worker, "dense", "eager", cs, 12), run(worker, "dense", decode, cs, 12))


def test_star_one_block_equals_dense(worker):
    cs = [(cases()[0][0][:600], cases()[0][1])]
    same(run(worker, "dense", "eager", cs, 8), run(worker, "star", "graph", cs, 8))


@pytest.mark.parametrize("mode", ["dense", "star"])
def test_compiled_prefill_layers_equal_eager(worker, mode, monkeypatch):
    cs = cases()
    monkeypatch.setenv("STAR_RUNTIME_COMPILE", "0")  # the stock eager layers
    plain = run(worker, mode, "eager", cs, 12)
    monkeypatch.delenv("STAR_RUNTIME_COMPILE")
    same(plain, run(worker, mode, "eager", cs, 12))


@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("mode", ["dense", "star"])
def test_worker_split_over_two_gpus_equals_one(worker, mode):
    cfg = RunConfig(model_path=MODEL, attn_type="dense", device="cuda", dtype="float32", gpus_per_worker=2,
                    ignore_eos=True)
    split = Worker(cfg, resolve_model(MODEL), 0, 1)
    try:
        split.model.load_state_dict(worker.model.state_dict())  # random init on the CPU (split) != on a GPU
        cs = cases()
        same(run(worker, mode, "eager", cs, 12), run(split, mode, "static", cs, 12))
    finally:
        split.close()


@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
def test_every_gpu_under_torchrun(tmp_path):
    out = tmp_path / "ranks.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(GPUS),
                    str(ROOT / "tests" / "helpers" / "gpu_ranks.py"), str(out)], check=True, timeout=1200,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    res = json.loads(out.read_text())
    assert res["ok"], res
