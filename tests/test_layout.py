"""How contexts are cut: star blocks in order over workers, ring zigzag chunks covering every position once."""

import pytest
import torch

from star_runtime.modes.ring import zigzag_positions
from star_runtime.modes.star import star_plan


@pytest.mark.parametrize("length,world", [(1, 1), (5, 3), (100, 2), (101, 3), (4096, 4), (7, 8)])
def test_zigzag_covers_every_position_once(length, world):
    allpos = torch.cat([zigzag_positions(length, world, r)[0] for r in range(world)])
    c = zigzag_positions(length, world, 0)[1]
    assert sorted(allpos.tolist()) == list(range(2 * world * c))
    assert 2 * world * c >= length
    # balanced: every rank holds 2c positions and the same number of causal pairs
    pairs = [int(sum(p + 1 for p in zigzag_positions(length, world, r)[0].tolist())) for r in range(world)]
    assert len(set(pairs)) == 1


@pytest.mark.parametrize("length,bs,world,expect", [
    (100, 32, 1, [(0, 1, 2, 3)]),
    (100, 32, 2, [(0, 1), (2, 3)]),
    (100, 32, 3, [(0, 1), (2,), (3,)]),
    (20, 32, 3, [(0,), (), ()]),
    (100, -1, 2, [(0,), (1,)]),
])
def test_star_plan_blocks_in_order(length, bs, world, expect):
    plan = star_plan(length, bs, -1, world)
    assert [tuple(b) for b in plan.blocks] == expect
    assert plan.anchor == plan.block_size


@pytest.mark.parametrize("length,num_blocks,world,size,blocks", [
    (4096, 4, 2, 1024, [(0, 1), (2, 3)]),
    (8192, 4, 2, 2048, [(0, 1), (2, 3)]),
    (1001, 4, 4, 251, [(0,), (1,), (2,), (3,)]),
    (3, 4, 2, 1, [(0, 1), (2,)]),  # shorter than the block count: one-token blocks
])
def test_star_plan_num_blocks_scales_with_length(length, num_blocks, world, size, blocks):
    plan = star_plan(length, -1, -1, world, num_blocks)
    assert plan.block_size == size and plan.anchor == size
    assert [tuple(b) for b in plan.blocks] == blocks


def test_star_plan_anchor_capped_and_default_block():
    plan = star_plan(1000, -1, 64, 4)
    assert plan.block_size == 250 and plan.anchor == 64
