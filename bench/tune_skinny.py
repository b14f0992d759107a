"""Tile configurations of the skinny matmul kernel (star_runtime/models/skinny.py) timed per linear-layer shape
of a model at a few token counts, against torch's matmul (cuBLASLt) and the weight bytes read at the copy
bandwidth, all in the same run.

Each shape gets ``--copies`` weights (so nothing stays in L2) applied one after another from one CUDA graph;
every configuration's output is checked against torch's (bf16: max |diff| <= 2 ulps of the output's scale).
Prints the fastest configuration per (rows bucket, N, K) and writes every timing as JSON lines (--out); --write
merges the winners into skinny_tuned.json. A bucket is tuned at the token count given for it (1 for the 16-row
bucket: decode; give one count per bucket).

    python bench/tune_skinny.py --tokens 64 1 --out docs/results/skinny_tune_h200.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from floors import copy_bandwidth, graph_ms  # noqa: E402
from micro_linear import shapes  # noqa: E402

from star_runtime.models import skinny  # noqa: E402
from star_runtime.models.random_configs import random_config  # noqa: E402


def candidates(bm: int) -> list[tuple[int, int, int, int]]:
    """(BLOCK_N, BLOCK_K, warps, stages) worth compiling for rows bucket bm (shared memory within the card's)."""
    out = []
    if bm == 64:
        space = [(32, 4), (64, 4), (128, 4), (128, 8), (256, 8)]
        bks, stages = (64, 128), (3, 4, 6)
    else:
        space = [(32, 4), (64, 4), (128, 4)]
        bks, stages = (128, 256), (3, 4, 6)
    for (bn, w), bk, st in itertools.product(space, bks, stages):
        if st * (bm + bn) * bk * 2 <= 200 * 1024:
            out.append((bn, bk, w, st))
    return out


def write(card: str, bm: int, n: int, k: int, conf: tuple | None) -> None:
    """Merge one entry into skinny_tuned.json: the configuration, or None where torch's matmul was faster (the
    shape then keeps F.linear)."""
    table = json.loads(skinny.TUNED_FILE.read_text()) if skinny.TUNED_FILE.exists() else {}
    table.setdefault(card, {})[f"{bm},{n},{k}"] = list(conf) if conf else None
    tmp = skinny.TUNED_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, skinny.TUNED_FILE)  # atomic: a reader sees the old table or the new one


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama3-8b", help="a random_configs shape")
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 1])
    ap.add_argument("--copies", type=int, default=8, help="weights per shape applied in turn")
    ap.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--out", default=None)
    ap.add_argument("--write", action="store_true",
                    help="merge the fastest configurations into star_runtime/models/skinny_tuned.json for this card")
    a = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    torch.backends.cuda.preferred_blas_library("cublaslt")
    cfg = random_config(a.model)
    card = torch.cuda.get_device_name()
    bw = copy_bandwidth(dev)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = open(a.out, "a") if a.out else None
    best = {}
    for name, n, k in shapes(cfg, fused=True):
        ws = [torch.randn(n, k, device=dev, dtype=dt) * 0.02 for _ in range(a.copies)]
        floor_us = 1e6 * n * k * 2 / bw
        for t in a.tokens:
            x = torch.randn(t, k, device=dev, dtype=dt)
            ref = F.linear(x, ws[0])
            tol = 2 * ref.abs().max().item() * 2 ** -8
            torch_us = 1e3 * graph_ms(lambda: [F.linear(x, w) for w in ws]) / a.copies
            bm = skinny.rows_bucket(t)
            rows = []
            todo = [(c, s) for c in candidates(bm) for s in a.splits
                    if n % c[0] == 0 and k % (s * c[1]) == 0 and sms // 2 <= (n // c[0]) * s <= 32 * sms]
            for (bn, bk, w, st), s in tqdm(todo, desc=f"{name} {n}x{k} {t} tokens", file=sys.stderr):
                conf = (bn, bk, s, w, st)
                try:
                    y = skinny.run(x, ws[0], None, conf)
                    err = (y.float() - ref.float()).abs().max().item()
                    us = 1e3 * graph_ms(lambda: [skinny.run(x, wt, None, conf) for wt in ws]) / a.copies
                except Exception as e:  # noqa: BLE001 -- a configuration the compiler refuses: recorded, skipped
                    rows.append({"config": conf, "error": f"{type(e).__name__}: {str(e)[:120]}"})
                    continue
                rows.append({"config": conf, "us": us, "max_err": err, "ok": err <= tol})
            good = [r for r in rows if r.get("ok")]
            top = min(good, key=lambda r: r["us"]) if good else None
            rec = {"card": card, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "model": a.model,
                   "shape": name, "n": n, "k": k, "tokens": t, "rows_bucket": bm, "sms": sms,
                   "copy_tb_per_s": bw / 1e12, "floor_us": floor_us, "torch_us": torch_us,
                   "best": top, "bad": [r for r in rows if not r.get("ok")][:5],
                   "all": sorted(good, key=lambda r: r["us"])}
            if top is not None:
                best[(bm, n, k)] = (tuple(top["config"]), top["us"], torch_us, floor_us)
            if a.write:  # after every shape: a run cut short keeps what it measured; none passing: torch's
                write(card, bm, n, k, tuple(top["config"]) if top is not None and top["us"] < torch_us else None)
            print(json.dumps({k_: v for k_, v in rec.items() if k_ != "all"}), flush=True)
            if out:
                out.write(json.dumps(rec) + "\n")
                out.flush()
    print(f"\n{card}, copy {bw / 1e12:.2f} TB/s")
    print(f"{'bucket':>6} {'N':>6} {'K':>6} {'skinny us':>9} {'torch us':>8} {'floor us':>8}  config")
    for (bm, n, k), (conf, us, tus, fus) in best.items():
        print(f"{bm:>6} {n:>6} {k:>6} {us:>9.1f} {tus:>8.1f} {fus:>8.1f}  {conf}")
    if a.write:
        print(f"wrote {skinny.TUNED_FILE}")


if __name__ == "__main__":
    main()
