"""Cached blocks at Llama-3-8B head shapes in bf16 and a query's own rows, filled into a PageTable (the GPU
tests of attention/pages.py)."""

import torch

from star_runtime.attention.pages import PageTable, capacity_bucket, pages_needed


def cached_blocks(lens, seed, layers=2, hkv=8, d=128, hq=32, tb=64):
    """Blocks of lens[i] keys placed one after another, the own rows' query KV at [sum(lens), + tb), a query
    (1, hq, tb, d). Returns (entries, offsets, total, own, q, inv_freq (d/2,) fp64 on the GPU, table)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    inv = (1.0 / (500000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))).cuda()
    offs = [sum(lens[:i]) for i in range(len(lens))]
    total = sum(lens)
    entries = [torch.randn(layers, 2, hkv, n, d, device="cuda", generator=g).to(torch.bfloat16) for n in lens]
    own = torch.zeros(layers, 2, total + tb + 16, hkv, d, device="cuda", dtype=torch.bfloat16)
    own[:, :, total:total + tb] = torch.randn(layers, 2, tb, hkv, d, device="cuda", generator=g).to(torch.bfloat16)
    q = torch.randn(1, hq, tb, d, device="cuda", generator=g).to(torch.bfloat16)
    table = PageTable(capacity_bucket(pages_needed(lens)), hkv, d // 2, "cuda", kernel=True)
    table.fill(entries, offs, inv.float().cpu(), own, total, tb)
    return entries, offs, total, own, q, inv, table
