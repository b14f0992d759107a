"""The star anchor is encoded once, on rank 0, and broadcast layer by layer: the other ranks never run it
through the model, receive exactly rank 0's tensors, and their KV equals the one-worker encoding (fp32,
1e-5); with anchor == block, rank 0 takes block 0's KV from the anchor pass instead of encoding it twice."""

import pytest
import torch

from conftest import assert_same_steps, make_engine, random_ids, run_ids
from star_runtime.modes import star as star_mode
from star_runtime.modes.star import encode_star, star_plan


class _Done:
    def wait(self):
        return True


class FakeGroup:
    """Stands in for the torch.distributed group of one rank: the source records what it broadcasts, a
    receiver is handed those tensors in the same order."""

    def __init__(self, rank, world, sent=None):
        self.rank, self.world_size, self.device = rank, world, torch.device("cpu")
        self.sent = [] if sent is None else sent
        self.calls = 0

    def broadcast_async(self, t, src):
        assert src == 0
        if self.rank == src:
            self.sent.append(t.clone())
        else:
            t.copy_(self.sent[self.calls])
        self.calls += 1
        return _Done()


@pytest.fixture(scope="module")
def model():
    with make_engine(attn_type="star", block_size=32) as eng:
        yield eng.launcher.worker.model


def forwarded(monkeypatch):
    """Record the (batch, tokens) shape of every forward phase 1 runs."""
    shapes = []
    real = star_mode.run_decoder

    def spy(m, ids, pos, prefill_layers="auto"):
        shapes.append(tuple(ids.shape))
        return real(m, ids, pos, prefill_layers)

    monkeypatch.setattr(star_mode, "run_decoder", spy)
    return shapes


def kv(shard, layers):
    return [torch.cat(shard.get(i), dim=0) for i in range(layers)]


@pytest.mark.parametrize("anchor", [32, 12])
def test_receivers_get_the_anchor_and_match_one_worker(model, monkeypatch, anchor):
    layers = model.config.num_hidden_layers
    ctx = torch.tensor(random_ids(150, 5))  # blocks of 32: 0..4, the last one short
    one = encode_star(model, ctx, star_plan(150, 32, anchor, 1), FakeGroup(0, 1))
    plan = star_plan(150, 32, anchor, 3)  # blocks (0, 1) | (2, 3) | (4,)
    shapes = forwarded(monkeypatch)
    g0 = FakeGroup(0, 3)
    s0 = encode_star(model, ctx, plan, g0)
    rank0 = list(shapes)
    shapes.clear()
    s1 = encode_star(model, ctx, plan, FakeGroup(1, 3, g0.sent))
    s2 = encode_star(model, ctx, plan, FakeGroup(2, 3, g0.sent))
    assert len(g0.sent) == layers and g0.sent[0].shape == (2, 1, 2, anchor, 16)
    # only rank 0 runs the anchor; with anchor == block that pass is block 0, so block 0 is not run again
    assert rank0 == ([(1, anchor), (1, 32)] if anchor == 32 else [(1, anchor), (2, 32)])
    assert shapes == [(2, 32), (1, 22)]  # the short last block runs at its own length, unpadded
    got = [torch.cat(parts, dim=2) for parts in zip(kv(s0, layers), kv(s1, layers), kv(s2, layers))]
    for g, r in zip(got, kv(one, layers)):
        assert g.shape == r.shape == (2, 2, 150, 16)
        assert torch.allclose(g, r, atol=1e-5), (g - r).abs().max()


def test_a_rank_without_blocks_still_takes_part(model):
    ctx = torch.tensor(random_ids(40, 6))
    plan = star_plan(40, 32, 32, 3)  # two blocks: rank 2 holds none but must join every broadcast
    g0 = FakeGroup(0, 3)
    encode_star(model, ctx, plan, g0)
    g2 = FakeGroup(2, 3, g0.sent)
    assert len(encode_star(model, ctx, plan, g2)) == 0
    assert g2.calls == g0.calls == model.config.num_hidden_layers


def test_one_block_needs_no_anchor(model):
    g = FakeGroup(0, 2)
    shard = encode_star(model, torch.tensor(random_ids(20, 7)), star_plan(20, 32, 32, 2), g)
    assert len(shard) == 20 and g.calls == 0


def test_short_anchor_two_workers_equal_one(ray_session):
    """Anchor shorter than a block, over real Ray workers (gloo): the broadcast anchor changes nothing."""
    ctx, query = random_ids(130, 31), random_ids(6, 32)
    with make_engine(attn_type="star", block_size=32, anchor_block_size=10) as eng:
        one = run_ids(eng, ctx, query, 8)
    with make_engine(attn_type="star", block_size=32, anchor_block_size=10, num_workers=2) as eng:
        two = run_ids(eng, ctx, query, 8)
    assert two.tokens == one.tokens
    assert_same_steps(two.logits, one.logits, 1e-4)


@pytest.mark.parametrize("length,anchor,world", [(192, 32, 3), (192, 12, 3), (256, 32, 2)])
def test_flop_model_counts_the_tokens_each_rank_encodes(model, monkeypatch, length, anchor, world):
    """bench/flop_model.py's busiest-GPU linear work is the most tokens any rank runs through the model."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from flop_model import Shape, star_flops

    ctx = torch.tensor(random_ids(length, 8))
    plan = star_plan(length, 32, anchor, world)
    shapes = forwarded(monkeypatch)
    g0 = FakeGroup(0, world)
    per_rank = []
    for rank in range(world):
        shapes.clear()
        encode_star(model, ctx, plan, g0 if rank == 0 else FakeGroup(rank, world, g0.sent))
        per_rank.append(sum(b * t for b, t in shapes))
    shape = Shape()
    assert star_flops(shape, length, world, 32, anchor)["linear"] == max(per_rank) * shape.linear_flops_per_token
