"""One forward of a decoder recorded as a few CUDA graphs cut at decoder-layer boundaries, replayed in order.

A graph of a whole 8B forward (~400 kernels) starts on the GPU only once its launch has been submitted whole:
on one H200 the first kernel of a request's step began ~0.5 ms after ``cudaGraphLaunch`` was called (a
profiled 8K cached-passage request, docs/results/block_ttft_launch_h200.log), host time on the critical path
of every first token and every decode step. Cut into pieces -- a short first one, then some layers each -- the
GPU starts once the first piece is submitted, and each later piece is launched while the ones before it run.
The pieces share one memory pool and are captured and replayed in the same order (torch's rule for graphs
that share a pool), so the tensors one piece leaves for the next stay where the next one reads them.
"""

from __future__ import annotations

import torch

FIRST = 2  # decoder layers in the first piece: the GPU starts after its launch
EVERY = 8  # decoder layers in each later piece


def cuts(num_layers: int) -> list[int]:
    """The decoder layers before which a new piece begins: [2, 8, 16, 24] for 32 layers, [1] for 2."""
    first = min(FIRST, max(1, num_layers // 2))
    out = [first] if first < num_layers else []
    return out + [i for i in range(EVERY, num_layers, EVERY) if i > first]


class PiecewiseGraph:
    """``capture(fn)`` records fn() (one forward of ``model``, on a side stream) as len(cuts) + 1 graphs;
    ``replay()`` launches them in order on the current stream. The pieces end where a decoder layer is about to
    run (a forward pre-hook), so a layer's work and its attention state stay inside one piece."""

    def __init__(self, model):
        self.layers = list(model.get_decoder().layers)
        self.graphs: list[torch.cuda.CUDAGraph] = []

    def capture(self, fn):
        """fn's result, recorded (its tensors are the graphs' outputs, rewritten by every replay)."""
        pool = torch.cuda.graph_pool_handle()
        at = cuts(len(self.layers))
        graphs = [torch.cuda.CUDAGraph() for _ in range(len(at) + 1)]
        state = {"i": 0}

        def next_piece(module, args, kwargs):
            i = state["i"]
            graphs[i].capture_end()
            graphs[i + 1].capture_begin(pool=pool, capture_error_mode="thread_local")
            state["i"] = i + 1

        hooks = [self.layers[i].register_forward_pre_hook(next_piece, with_kwargs=True) for i in at]
        torch.cuda.synchronize()
        stream = torch.cuda.Stream()
        try:
            with torch.cuda.stream(stream):
                graphs[0].capture_begin(pool=pool, capture_error_mode="thread_local")
                try:
                    out = fn()
                finally:
                    graphs[state["i"]].capture_end()
        finally:
            for h in hooks:
                h.remove()
        torch.cuda.current_stream().wait_stream(stream)
        if state["i"] != len(at):
            raise RuntimeError(f"the forward ran {state['i'] + 1} of {len(at) + 1} graph pieces")
        self.graphs = graphs
        return out

    def replay(self) -> None:
        for g in self.graphs:
            g.replay()
