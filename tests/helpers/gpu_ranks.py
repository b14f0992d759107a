"""Run by tests/gpu/test_paths.py under torchrun over every GPU: ring and star with CUDA-graph decode vs eager,
star over the GPUs (anchor broadcast over NCCL) vs star on one GPU, ring vs dense on one GPU. Rank 0 writes
{"ok": bool, "checks": {name: max |dlogit| or a mismatch}} to the path given."""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_paths import MODEL, cases, run  # noqa: E402

from star_runtime.config import RunConfig  # noqa: E402
from star_runtime.models.loader import resolve_model  # noqa: E402
from star_runtime.parallel.worker import Worker  # noqa: E402


def compare(a, b, host):
    if any(x.tokens != y.tokens for x, y in zip(a, b)):
        return "tokens differ"
    if not host:  # logits live on the query host (the last rank)
        return 0.0
    return max((p - q).abs().max().item() for x, y in zip(a, b) for p, q in zip(x.logits, y.logits))


def main(out: str):
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    cfg = RunConfig(model_path=MODEL, attn_type="ring", num_workers=world, device="cuda", dtype="float32",
                    ignore_eos=True)
    w = Worker(cfg, resolve_model(MODEL), rank, world, "env://")
    solo = Worker(cfg.replace(num_workers=1), resolve_model(MODEL), 0, 1)  # every rank: one worker on its GPU
    cs, host = cases(), rank == world - 1
    checks = {}
    for mode in ("ring", "star"):
        checks[f"{mode} x{world}: graph vs eager decode"] = compare(run(w, mode, "eager", cs, 12),
                                                                     run(w, mode, "graph", cs, 12), host)
    checks[f"star x{world} vs 1 GPU"] = compare(run(solo, "star", "eager", cs, 12), run(w, "star", "eager", cs, 12),
                                               host)
    checks[f"ring x{world} vs dense on 1 GPU"] = compare(run(solo, "dense", "eager", cs, 12),
                                                        run(w, "ring", "eager", cs, 12), host)
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, checks)
    solo.close()
    w.close()
    if rank == 0:
        merged = {}
        for k in checks:  # a token mismatch on any rank, else the host's logit difference
            vals = [g[k] for g in gathered]
            merged[k] = next((v for v in vals if isinstance(v, str)), max(vals))
        ok = all(not isinstance(v, str) and v <= 1e-3 for v in merged.values())
        Path(out).write_text(json.dumps({"ok": ok, "checks": merged}))
        print(json.dumps(merged, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
