"""Physical floors measured on the card in the same run as the benchmark they sit beside.

* weight read: every linear layer of the model (decoder layers + LM head) applied to ``tokens`` tokens,
  replayed from one CUDA graph: the time to read every weight once (matmuls at the card's real speed);
* copy bandwidth: a large device-to-device copy, bytes read + written over time: the rate any pass over
  the KV can reach; the KV floor is the KV bytes read once at that rate.
"""

from __future__ import annotations

import functools
import statistics

import torch


def _median_ms(fn, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@torch.inference_mode()
def linear_floor_ms(model, tokens: int) -> float:
    """Milliseconds for every matmul of the decoder layers and the LM head on a (tokens, in) input, one CUDA
    graph replay (the weights read once; the same matmul kernels the model runs: a fused group of projections,
    models/fuse.py, as its one matmul, and the decoder layers' matmuls through models/skinny.py as the fused
    model runs them)."""
    from star_runtime.models.fuse import SkinnyLinear, FusedPart
    from star_runtime.models.skinny import linear as skinny_linear

    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    mats = matmuls(model)
    head = model.get_output_embeddings()
    head_tokens = 1  # the runtime keeps the logits of the last position only (logits_to_keep=1)
    xs = {w.shape[1]: torch.randn(tokens, w.shape[1], device=dev, dtype=dtype) for w, _ in mats}
    xh = torch.randn(head_tokens, head.in_features, device=dev, dtype=dtype)

    fast = any(isinstance(m, (SkinnyLinear, FusedPart)) for m in model.get_decoder().layers.modules())
    lin = skinny_linear if fast else torch.nn.functional.linear

    def run():
        for w, b in mats:
            lin(xs[w.shape[1]], w, b)
        torch.nn.functional.linear(xh, head.weight, getattr(head, "bias", None))

    return graph_ms(run)


def graph_ms(fn, repeats: int = 20) -> float:
    """Median milliseconds of ``fn`` replayed from one CUDA graph (run twice on a side stream first, outside the
    capture, so kernels are chosen and compiled before it)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    return _median_ms(graph.replay, repeats)


def matmuls(model) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight (out, in), bias) of every matmul the decoder layers run: each nn.Linear, and each fused group of
    projections once, over its concatenated weight."""
    from star_runtime.models.fuse import FusedPart

    out = []
    for m in model.get_decoder().layers.modules():
        if isinstance(m, torch.nn.Linear):
            out.append((m.weight, m.bias))
        elif isinstance(m, FusedPart) and m.index == 0:
            out.append((m._group.weight, m._group.bias))
    return out


def weight_bytes(model) -> int:
    """Bytes of the decoder layers' matmul weights and the LM head: what one forward reads at least once."""
    head = model.get_output_embeddings().weight
    return sum(w.numel() * w.element_size() for w, _ in matmuls(model)) + head.numel() * head.element_size()


def copy_bandwidth(device, nbytes: int = 4 << 30) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    b = torch.empty_like(a)
    b.copy_(a)
    ms = _median_ms(functools.partial(b.copy_, a), repeats=10)
    del a, b
    return 2 * nbytes / (ms / 1e3)


def kv_bytes_per_token(model) -> int:
    from star_runtime.models.loader import head_dim, text_config

    cfg = text_config(model.config)
    return (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim(model.config)
            * next(model.parameters()).element_size())
