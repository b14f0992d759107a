"""Short queries over long token-major KV on one GPU: the split-KV Triton kernel against the varlen flash
kernel, for the two runtime calls (decode_partial: one token per row; prefill_partial: a question's query
tokens after a context of cached passages), Llama-3-8B heads (32 query / 8 KV heads, D 128), bf16.

For the question's query it also times attention/pages.py: the same query over the context as cached 512-token
blocks where they lie (the query rotated per block, no gather), with the kernel's default tiles and the
--page_configs tried beside them.

Floor per row, measured in the same run: the KV bytes read once at the card's copy bandwidth
(bench/floors.py), or the attention FLOPs at the dense bf16 matmul rate measured here, whichever is larger.
Each call is timed as a CUDA-graph replay (as the runtime's steps run it). Prints a table and writes JSON
lines (--out).

    python bench/micro_attention.py --out docs/results/short_query_attention_h200.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import star_runtime.attention.partial as partial  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from floors import copy_bandwidth  # noqa: E402
import star_runtime.attention.pages as pages  # noqa: E402
from star_runtime.attention.pages import PageTable, capacity_bucket, pages_needed  # noqa: E402


def time_us(fn, n: int = 50, graph: bool = False) -> float:
    """Mean over n calls; graph: the call captured once in a CUDA graph and replayed, as the
    runtime's steps run it (no launch cost)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        fn = g.replay
        fn()
        torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n * 1000


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    us = time_us(lambda: a @ a, 20)
    return 2 * 8192 ** 3 / (us / 1e6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["1:1:32768", "1:1:131072", "16:1:4096", "1:50:8192",
                                                   "1:50:32768"],
                    help="rows:query_tokens:context_tokens")
    ap.add_argument("--page_configs", nargs="*",
                    default=["64:64:4:3:0", "64:64:4:3:1", "64:64:4:2:1", "64:32:4:3:1", "128:64:8:3:1",
                             "32:64:4:3:1", "64:64:4:3:1:4", "64:64:4:3:1:16", "64:128:8:2:1"],
                    help="BLOCK_M:BLOCK_N:warps:stages[:fast[:splits]] of the in-place kernel to try (fast: whole "
                         "pages unmasked; splits 0: as many as fill the card); each is checked against the default's "
                         "output")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    hq, hkv, d = 32, 8, 128
    card = torch.cuda.get_device_name()
    bw, rate = copy_bandwidth("cuda"), matmul_rate()
    print(f"{card}: copy {bw / 1e12:.2f} TB/s, bf16 matmul {rate / 1e12:.0f} TFLOP/s")
    rows = []
    for case in args.cases:
        a, t, ctx = (int(x) for x in case.split(":"))
        tb = 1 if t == 1 else max(16, 1 << (t - 1).bit_length())
        c = ctx + tb + 64
        q = torch.randn(a, hq, tb, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(a, c, hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        slots = torch.arange(c, device="cuda")
        if t == 1:
            used = torch.full((a,), ctx, dtype=torch.int32, device="cuda")

            def call():
                return partial.decode_partial(q, k, v, used, slots, d ** -0.5, native_out=True)
        else:
            used = torch.tensor([ctx + t], dtype=torch.int32, device="cuda")
            cu_q = torch.tensor([0, t], dtype=torch.int32, device="cuda")

            def call():
                return partial.prefill_partial(q, k, v, used, cu_q, slots, d ** -0.5, native_out=True)
        kv_bytes = a * ctx * hkv * d * 2 * 2
        flops = 4 * a * t * ctx * hq * d
        floor = max(kv_bytes / bw, flops / rate) * 1e6
        row = {"card": card, "rows": a, "query_tokens": t, "context": ctx, "floor_us": round(floor, 1),
               "date": time.strftime("%Y-%m-%d")}
        for kernel in ("split", "flash"):
            partial._KERNEL = kernel
            row[f"{kernel}_us"] = round(time_us(call, graph=True), 1)
        partial._KERNEL = None
        if t > 1:  # the same context as cached blocks of 512 tokens, attended where they lie
            lens = [512] * (ctx // 512)
            entries = [torch.randn(1, 2, hkv, n, d, device="cuda", dtype=torch.bfloat16) for n in lens]
            own = torch.zeros(1, 2, c, hkv, d, device="cuda", dtype=torch.bfloat16)
            table = PageTable(capacity_bucket(pages_needed(lens)), hkv, d // 2, "cuda", kernel=True)
            inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2).float() / d))
            table.fill(entries, [512 * i for i in range(len(lens))], inv, own, ctx, tb)
            row["paged_us"] = round(time_us(lambda: table.attend(0, q, d ** -0.5), graph=True), 1)
            ref = table.attend(0, q, d ** -0.5)[0].float()
            if not pages._OK["ok"]:
                raise SystemExit("the in-place kernel did not build or launch here (see its notice above)")
            for conf in args.page_configs:
                table.config = tuple(int(x) for x in conf.split(":"))
                try:
                    if not 4 <= len(table.config) <= 6:
                        raise ValueError("give 4 to 6 numbers")
                    err = (table.attend(0, q, d ** -0.5)[0].float() - ref).abs().max().item()
                    if not pages._OK["ok"]:  # the kernel failed and its torch form answered: not this config's time
                        raise RuntimeError("the kernel did not build or launch")
                    if err > 0.05:
                        raise ValueError(f"differs from the default by {err:.3f}")
                    row[f"paged_{conf}"] = round(time_us(lambda: table.attend(0, q, d ** -0.5), graph=True), 1)
                except Exception as e:  # noqa: BLE001 -- a tile shape this Triton cannot build: say so, go on
                    row[f"paged_{conf}"] = f"{type(e).__name__}: {str(e)[:60]}"
                pages._OK["ok"] = True  # the next config gets the kernel again
            table.config = None
            # passages of uneven length (as retrieved text is): 384-639 tokens, pages with a partial last tile
            g = torch.Generator().manual_seed(0)
            uneven = []
            while sum(uneven) < ctx:
                uneven.append(int(torch.randint(384, 640, (1,), generator=g)))
            uneven[-1] -= sum(uneven) - ctx
            entries = [torch.randn(1, 2, hkv, n, d, device="cuda", dtype=torch.bfloat16) for n in uneven if n > 0]
            table = PageTable(capacity_bucket(pages_needed([e.shape[3] for e in entries])), hkv, d // 2, "cuda",
                              kernel=True)
            table.fill(entries, [sum(uneven[:i]) for i in range(len(entries))], inv, own, ctx, tb)
            row["paged_uneven_us"] = round(time_us(lambda: table.attend(0, q, d ** -0.5), graph=True), 1)
            if not pages._OK["ok"]:  # timed over the torch form: no kernel number to give
                row["paged_uneven_us"], pages._OK["ok"] = "kernel failed", True
            entries = own = table = None
        rows.append(row)
        q = k = v = call = None  # free the buffers before the next case
        torch.cuda.empty_cache()
    print("\n| card | rows x query tokens | context | split-KV (us) | in place (us) | in place, uneven passages (us) "
          "| varlen flash (us) | floor (us) | split / floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['card']} | {r['rows']} x {r['query_tokens']} | {r['context']} | {r['split_us']} | "
              f"{r.get('paged_us', '')} | {r.get('paged_uneven_us', '')} | {r['flash_us']} | {r['floor_us']} | {r['split_us'] / r['floor_us']:.2f}x |")
    for r in rows:
        tried = {k[6:]: v for k, v in r.items() if k.startswith("paged_") and k not in ("paged_us", "paged_uneven_us")}
        if tried:
            print(f"in place, {r['query_tokens']} tokens over {r['context']}: " +
                  ", ".join(f"{k} {v}" for k, v in tried.items()))
    if args.out:
        with open(args.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
