"""FLOP model of phase 1 per GPU: what ring and star must compute, and the speed-up it predicts.

Per GPU, with context L over H workers, model of hidden size h, n_layers layers:
  linear FLOPs per token   = 2 x (parameters of the q/k/v/o projections and the MLP)         (no LM head)
  attention FLOPs per pair = 4 x heads x head_dim x n_layers    (q.k and p.v, 2 FLOPs per multiply-add)
  ring : L/H tokens of linear work, and 1/H of the causal pairs L^2/2 (zigzag: every GPU the same).
  star : its blocks (S tokens each, L/(H S) of them, earlier GPUs taking the extra ones) of linear work;
         attention inside each block (S^2/2) and from each block but block 0 to the anchor (S x A). The
         anchor (A tokens, A^2/2 pairs) is encoded once, by the first GPU, and broadcast; with A == S it is
         block 0, which the first GPU then does not encode again. The busiest GPU counts.
The predicted speed-up assumes both run at the same FLOP rate.

  python bench/flop_model.py --length 131072 --workers 4 --block 8192
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from star_runtime.models.loader import head_dim  # noqa: E402
from star_runtime.modes.star import star_plan  # noqa: E402


@dataclass(frozen=True)
class Shape:
    hidden: int = 4096
    intermediate: int = 14336
    layers: int = 32
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128

    @classmethod
    def from_config(cls, cfg) -> "Shape":
        return cls(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
                   cfg.num_key_value_heads, head_dim(cfg))

    @property
    def linear_flops_per_token(self) -> float:
        q_o = 2 * self.hidden * self.heads * self.head_dim
        k_v = 2 * self.hidden * self.kv_heads * self.head_dim
        mlp = 3 * self.hidden * self.intermediate
        return 2.0 * self.layers * (q_o + k_v + mlp)

    @property
    def attention_flops_per_pair(self) -> float:
        return 4.0 * self.heads * self.head_dim * self.layers


def ring_flops(shape: Shape, length: int, workers: int) -> dict:
    tokens = length / workers
    pairs = length * length / 2 / workers
    return {"linear": tokens * shape.linear_flops_per_token, "attention": pairs * shape.attention_flops_per_pair}


def star_flops(shape: Shape, length: int, workers: int, block: int, anchor: int | None = None) -> dict:
    """The busiest GPU's FLOPs, for the blocks the runtime's own star plan gives each GPU (modes/star.py)."""
    plan = star_plan(length, block, anchor if anchor is not None else -1, workers)
    s, a = plan.block_size, plan.anchor
    busiest = None
    for rank, mine in enumerate(plan.blocks):
        sizes = [min(s, length - b * s) for b in mine]
        tokens = sum(sizes)
        pairs = sum(n * n / 2 + (n * a if b else 0) for b, n in zip(mine, sizes))  # block 0 sees no anchor
        if rank == 0 and mine and plan.num_blocks > 1:  # the anchor pass; with A == S it is block 0
            tokens += a - (sizes[0] if a == s else 0)
            pairs += a * a / 2 - (sizes[0] * sizes[0] / 2 if a == s else 0)
        flops = {"linear": tokens * shape.linear_flops_per_token, "attention": pairs * shape.attention_flops_per_pair}
        if busiest is None or sum(flops.values()) > sum(busiest.values()):
            busiest = flops
    return busiest


def apb_flops(shape: Shape, length: int, workers: int, block: int, passing: int, query: int,
              anchor: int | None = None, query_before: bool = False) -> dict:
    """Star's FLOPs plus apb's (modes/apb.py) on the busiest GPU: each block i also attends to the passing
    tokens of the blocks before it (block 0 passes only its tokens past the anchor), the query's T tokens
    run behind each block (their linear layers, their attention over [anchor ; passing ; block ; themselves])
    and score the block's keys (one more query-key product, T x n per block). query_before
    (--query_before_blocks): T more tokens before every block after the first, over [anchor ; passing ;
    themselves], and the block's n tokens over them."""
    plan = star_plan(length, block, anchor if anchor is not None else -1, workers)
    s, a = plan.block_size, plan.anchor
    sizes_all = [min(s, length - b * s) for b in range(plan.num_blocks)]
    passed = [min(passing, n - (a if b == 0 else 0)) for b, n in enumerate(sizes_all)]
    star = star_flops(shape, length, workers, block, anchor)
    busiest = None
    for rank, mine in enumerate(plan.blocks):
        mine = [b for b in mine if not (b == 0 and a == s and plan.num_blocks > 1)]
        extra_tokens, extra_pairs = 0, 0.0
        for b in mine:
            n = sizes_all[b]
            seen = sum(passed[:b])
            extra_pairs += n * seen  # the block over earlier blocks' passing tokens
            before = query_before and b > 0 and plan.num_blocks > 1
            if (passing > 0 or query_before) and plan.num_blocks > 1:
                extra_tokens += query
                extra_pairs += query * ((a if b else 0) + seen + n + query / 2) + query * n / 2  # + scoring
                extra_pairs += query * query if before else 0  # the rows behind also see the copy before
            if before:
                extra_tokens += query
                extra_pairs += query * (a + seen + query / 2) + n * query
        flops = {"linear": extra_tokens * shape.linear_flops_per_token,
                 "attention": extra_pairs * shape.attention_flops_per_pair}
        if busiest is None or sum(flops.values()) > sum(busiest.values()):
            busiest = flops
    return {k: star[k] + busiest[k] for k in star}


def predicted_speedup(shape: Shape, length: int, workers: int, block: int, anchor: int | None = None) -> float:
    r, s = ring_flops(shape, length, workers), star_flops(shape, length, workers, block, anchor)
    return sum(r.values()) / sum(s.values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--block", type=int, default=-1, help="-1: length / workers")
    p.add_argument("--anchor", type=int, default=-1, help="-1: the block size")
    a = p.parse_args(argv)
    block = a.block if a.block > 0 else math.ceil(a.length / a.workers)
    anchor = a.anchor if a.anchor > 0 else block
    shape = Shape()
    r, s = ring_flops(shape, a.length, a.workers), star_flops(shape, a.length, a.workers, block, anchor)
    print(f"ring per GPU: {sum(r.values()) / 1e12:.1f} TFLOP (linear {r['linear'] / 1e12:.1f}, attention "
          f"{r['attention'] / 1e12:.1f})")
    print(f"star per GPU: {sum(s.values()) / 1e12:.1f} TFLOP (linear {s['linear'] / 1e12:.1f}, attention "
          f"{s['attention'] / 1e12:.1f})")
    print(f"predicted star speed-up over ring: {sum(r.values()) / sum(s.values()):.2f}x")


if __name__ == "__main__":
    main()
