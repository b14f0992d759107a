"""Projections that read the same input fused into one matmul, for inference: q/k/v of every attention layer and
gate/up of every MLP.

A stock decoder layer calls ``q_proj(x)``, ``k_proj(x)``, ``v_proj(x)`` one after another; three small matmuls
read x three times and launch three kernels, and the narrow k/v ones (1024 of 4096 outputs for Llama-3-8B) run
far from the card's bandwidth (bench/micro_linear.py, cuBLAS, one H200, docs/results/linear_backends_h200.jsonl: every
linear layer of the 8B shape takes 4.44 ms for one token and 4.84 ms for 64 unfused, 4.15 and 4.30 with q/k/v
and gate/up fused). Here the layer's
weights are concatenated into one tensor ``[W_q; W_k; W_v]`` (out, in) and each projection's weight becomes a
view of its rows, so nothing is held twice; the first projection called with an input computes all outputs at
once, the others take their slice, and the last one lets go of them. The modeling code is not touched: the
stock forward still calls its three modules, which are swapped for ``FusedPart`` modules holding the same
weights (the same math: each output element is the same dot product, up to the rounding of a different GEMM
tiling).

Every matmul of a fused layer -- the groups and the layer's other nn.Linear modules (o_proj, down_proj), which
become ``SkinnyLinear`` (the same module, its class swapped) -- goes through models/skinny.py: its Triton kernel
for 64 tokens or fewer where it was tuned faster, torch's matmul otherwise.

Inference only: the parts share one weight tensor that no gradient reaches through the per-part views.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from . import skinny

GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))


class FusedProjection:
    """The shared state of one fused group: the concatenated weight (N, in) and bias (N,) or None, the output
    sizes, and the outputs of the input seen last until every part has taken its slice."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, sizes: list[int]):
        self.weight, self.bias, self.sizes = weight, bias, sizes
        self.x = None
        self.outs: tuple[torch.Tensor, ...] = ()
        self.left = 0

    def part(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> the output (..., sizes[index]) of projection ``index``."""
        if self.x is not x:  # a new input: every output at once
            self.x, self.outs, self.left = x, skinny.linear(x, self.weight, self.bias).split(self.sizes, dim=-1), len(self.sizes)
        out = self.outs[index]
        self.left -= 1
        if self.left == 0:  # every part has its slice: hold nothing between forwards
            self.x, self.outs = None, ()
        return out


class FusedPart(nn.Module):
    """Stands in for one nn.Linear of a fused group: same in/out features, its weight (and bias) a view into the
    group's concatenated tensor."""

    def __init__(self, group: FusedProjection, index: int, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self._group = group  # not a submodule: a plain attribute, shared by the group's parts
        self.index = index
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._group.part(self.index, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused part {self.index}"


class SkinnyLinear(nn.Linear):
    """An nn.Linear whose matmul is models/skinny.py's (the kernel for a few rows where it serves)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return skinny.linear(x, self.weight, self.bias)


def _fusable(linears: list) -> bool:
    first = linears[0]
    return all(
        type(m) is nn.Linear and m.in_features == first.in_features and m.weight.dtype == first.weight.dtype
        and m.weight.device == first.weight.device and (m.bias is None) == (first.bias is None)
        for m in linears
    ) and first.weight.device.type != "meta"


@torch.no_grad()
def fuse_projections(model) -> int:
    """Fuse q/k/v and gate/up of every decoder layer of ``model`` in place (those whose projections are plain
    nn.Linear of one input size, dtype and device; others are left as they are). Returns the groups fused."""
    fused = 0
    for layer in model.get_decoder().layers:
        if "forward" in layer.__dict__:  # accelerate's device hooks (a split worker): left stock
            continue
        for owner_name, names in GROUPS:
            owner = getattr(layer, owner_name, None)
            linears = [getattr(owner, n, None) for n in names] if owner is not None else [None]
            if any(m is None for m in linears) or not _fusable(linears):
                continue
            weight = torch.cat([m.weight for m in linears])
            bias = torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None
            sizes = [m.out_features for m in linears]
            group = FusedProjection(weight, bias, sizes)
            ws, bs = weight.split(sizes), bias.split(sizes) if bias is not None else [None] * len(sizes)
            for i, (n, w, b) in enumerate(zip(names, ws, bs)):
                setattr(owner, n, FusedPart(group, i, w, b))
            fused += 1
        for m in layer.modules():  # the layer's other matmuls: the same modules, the skinny kernel's forward
            if type(m) is nn.Linear:
                m.__class__ = SkinnyLinear
    return fused


@contextlib.contextmanager
def stock_projections(model):
    """Inside the block every fused part of ``model`` is an nn.Linear again over the same weight views, and every
    SkinnyLinear a plain nn.Linear (the stock layer's matmuls: a baseline that runs the model as transformers
    does)."""
    swapped, recast = [], []
    try:
        for layer in model.get_decoder().layers:
            for m in layer.modules():
                if type(m) is SkinnyLinear:
                    m.__class__ = nn.Linear
                    recast.append(m)
            for owner_name, names in GROUPS:
                owner = getattr(layer, owner_name, None)
                for n in names:
                    part = getattr(owner, n, None) if owner is not None else None
                    if isinstance(part, FusedPart):
                        lin = nn.Linear(part.in_features, part.out_features, bias=part.bias is not None,
                                        device="meta")
                        lin.weight, lin.bias = part.weight, part.bias
                        setattr(owner, n, lin)
                        swapped.append((owner, n, part))
        yield
    finally:
        for owner, n, part in swapped:
            setattr(owner, n, part)
        for m in recast:
            m.__class__ = SkinnyLinear
