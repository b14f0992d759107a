"""On the GPU: a forward recorded as several CUDA graphs cut at decoder layers (graphs.py) replays to the same
logits as the forward run uncaptured (the same kernels: bit for bit), over inputs written after the capture,
and the pieces are the ones the cuts name."""

import torch

from star_runtime.graphs import PiecewiseGraph, cuts
from star_runtime.models.loader import load_model, resolve_model


def test_pieces_replay_the_uncaptured_forward_bit_for_bit():
    model = load_model(resolve_model("random:tiny"), torch.bfloat16, torch.device("cuda"))
    layers = len(model.get_decoder().layers)
    ids = torch.zeros((2, 16), dtype=torch.long, device="cuda")
    pos = torch.arange(16, device="cuda").expand(2, -1).contiguous()

    def forward():
        return model(input_ids=ids, position_ids=pos, use_cache=False).logits

    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.inference_mode():
        for _ in range(2):  # warm-up outside the capture
            forward()
        graph = PiecewiseGraph(model)
        out = graph.capture(forward)
        assert len(graph.graphs) == len(cuts(layers)) + 1 > 1
        for _ in range(3):  # new inputs, written where the graphs read them
            ids.copy_(torch.randint(0, model.config.vocab_size, ids.shape, device="cuda", generator=g))
            pos.add_(7)
            graph.replay()
            assert torch.equal(out, forward())


def test_cuts():
    assert cuts(32) == [2, 8, 16, 24]
    assert cuts(2) == [1]
    assert cuts(1) == []
    assert cuts(9) == [2, 8]
