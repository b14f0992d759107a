"""GPU exactness checks (fp32): decode eager vs static vs CUDA graph, and (1 GPU) star one block / ring
vs dense, prefill through compiled vs eager decoder layers, a worker split over 2 GPUs vs one GPU (when 2
are visible); under torchrun, multi-GPU ring/star with graph decode vs eager decode, star over the GPUs
(anchor broadcast over NCCL) vs star on one GPU, and ring vs dense. Exits non-zero on mismatch.

  python bench/check_gpu_paths.py
  torchrun --nproc_per_node 2 bench/check_gpu_paths.py
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from star_runtime.config import RunConfig  # noqa: E402
from star_runtime.models.loader import resolve_model  # noqa: E402
from star_runtime.parallel.worker import Request, Worker  # noqa: E402

MODEL = "random:llama3-8b-2l"


def run(worker, mode, decode, cases, n):
    worker.cfg = worker.cfg.replace(attn_type=mode, block_size=-1 if mode != "star" else 700)
    worker.decode = decode
    reqs = [Request(i, c, q, n + i, keep_logits=True) for i, (c, q) in enumerate(cases)]
    return worker.run_batch(reqs)


def same(a, b, what, rank):
    ok = True
    for x, y in zip(a, b):
        both = bool(x.logits) and bool(y.logits)  # logits live on the query host (the last rank) only
        diff = max((p - q).abs().max().item() for p, q in zip(x.logits, y.logits)) if both else 0.0
        if x.tokens != y.tokens or diff > 1e-3:
            ok = False
        if rank == 0:
            shown = f"{diff:.2e}" if both else "(on the host rank)"
            print(f"{what:<38} tokens {'==' if x.tokens == y.tokens else '!='} max|dlogit| {shown}", flush=True)
    return ok


def main():
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    cfg = RunConfig(model_path=MODEL, attn_type="dense", num_workers=world, device="cuda", dtype="float32")
    w = Worker(cfg, resolve_model(MODEL), rank, world, "env://" if world > 1 else None)
    w.eos = set()
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randint(100, 30000, (n,), generator=g).tolist(),
              torch.randint(100, 30000, (q,), generator=g).tolist()) for n, q in [(3000, 40), (1500, 7), (2500, 1)]]
    ok = True
    if world == 1:
        eager = run(w, "dense", "eager", cases, 12)
        ok &= same(eager, run(w, "dense", "static", cases, 12), "dense: static vs eager decode", rank)
        ok &= same(eager, run(w, "dense", "graph", cases, 12), "dense: CUDA graph vs eager decode", rank)
        one_block = [(c, q) for c, q in cases if len(c) <= 700] or [(cases[0][0][:600], cases[0][1])]
        ok &= same(run(w, "dense", "eager", one_block, 8), run(w, "star", "graph", one_block, 8),
                   "star one block (graph) vs dense", rank)
        os.environ["STAR_RUNTIME_COMPILE"] = "0"  # prefill through the stock eager layers
        plain = {mode: run(w, mode, "eager", cases, 12) for mode in ("dense", "star")}
        del os.environ["STAR_RUNTIME_COMPILE"]
        for mode in ("dense", "star"):
            ok &= same(plain[mode], run(w, mode, "eager", cases, 12), f"{mode}: compiled vs eager layers", rank)
        if torch.cuda.device_count() >= 2:  # one worker whose layers are split over two GPUs
            split = Worker(cfg.replace(gpus_per_worker=2), resolve_model(MODEL), 0, 1)
            split.model.load_state_dict(w.model.state_dict())  # random init on CPU (split) != on a GPU
            split.eos = set()
            for mode in ("dense", "star"):
                ok &= same(run(w, mode, "eager", cases, 12), run(split, mode, split.decode, cases, 12),
                           f"{mode}: worker over 2 GPUs vs 1 GPU", rank)
            split.close()
    else:
        for mode in ("ring", "star"):
            ok &= same(run(w, mode, "eager", cases, 12), run(w, mode, "graph", cases, 12),
                       f"{mode} x{world}: CUDA graph vs eager decode", rank)
        solo = Worker(cfg.replace(num_workers=1), resolve_model(MODEL), 0, 1)  # every rank: one worker, own GPU
        solo.eos = set()
        ok &= same(run(solo, "star", "eager", cases, 12), run(w, "star", "eager", cases, 12),
                   f"star x{world} (anchor broadcast) vs 1 GPU", rank)
        ok &= same(run(solo, "dense", "eager", cases, 12), run(w, "ring", "eager", cases, 12),
                   f"ring x{world} vs dense on 1 GPU", rank)
        solo.close()
        ring = run(w, "ring", "graph", cases, 12)
        if rank == 0:
            print("ring shard tokens", [r.shard_tokens for r in ring])
    w.close()
    if rank == 0:
        print("GPU paths OK" if ok else "GPU paths MISMATCH", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
