"""Batched decode throughput: a decode step for A samples at once, attending per sample (one kernel sequence
per sample and layer) or over one padded copy of the batch's KV (one per layer), on one worker.

This is the evaluation workload (RULER, BABILong, RAG: small model, batch of 16, few thousand tokens each),
where per-sample launches, not FLOPs, set the step time. Writes JSON lines to --out and prints a table.

  python bench/bench_batch_decode.py --device cuda --batch 1 4 16 --length 4096 --out batch_decode.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from star_runtime.config import add_flags, from_args  # noqa: E402
from star_runtime.decode import resolve_decode_mode  # noqa: E402
from star_runtime.models.loader import resolve_model  # noqa: E402
from star_runtime.parallel.worker import Options, Request, Worker  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--length", type=int, default=4096, help="context tokens per sample")
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per sample")
    p.add_argument("--out", default=None)
    add_flags(p, exclude=("num_workers", "ignore_eos", "tokens_to_generate", "batch_size"),
              defaults={"device": "cuda", "attn_type": "dense"}, extra_flags={"model_path": ("--model",)})
    a = p.parse_args()
    a.model = a.model_path

    cfg = from_args(a, ignore_eos=True).validate()
    worker = Worker(cfg, resolve_model(a.model), 0, 1)
    card = torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"
    vocab = worker.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in a.batch:
        reqs = [Request(i, torch.randint(0, vocab, (a.length,), generator=g).tolist(),
                        torch.randint(0, vocab, (8,), generator=g).tolist(), a.tokens, mode=cfg.attn_type)
                for i in range(n)]
        tokens = {}
        for batched in (False, True):
            opts = Options(batched_kv=batched)
            worker.run_batch(reqs, opts)  # warm-up
            replies = worker.run_batch(reqs, opts)
            step_ms = 1000 * replies[0].decode_s / max(1, replies[0].steps - 1)
            tokens[batched] = [r.tokens for r in replies]
            row = {"card": card, "model": a.model or "bundled", "attn_type": a.attn_type, "batch": n,
                   "length": a.length, "path": "padded batch" if batched else "per sample",
                   "decode": resolve_decode_mode(cfg.decode, worker.model, worker.device),
                   "step_ms": round(step_ms, 3),
                   "tokens_per_s": round(n * 1000 / step_ms, 1)}
            rows.append(row)
            if a.out:
                with open(a.out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
        same = tokens[False] == tokens[True]
        rows[-1]["same_tokens"] = rows[-2]["same_tokens"] = same
    print("| card | batch | path | step (ms) | tokens/s | same tokens |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['card']} | {r['batch']} | {r['path']} | {r['step_ms']} | {r['tokens_per_s']} | {r['same_tokens']} |")


if __name__ == "__main__":
    main()
