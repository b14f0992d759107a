"""Exact merge of partial attentions (the first exact trick of the design notes).

A query attending to a KV set cut into parts P1..Pn gets, from each part, ``o_i = softmax(q K_i^T s) V_i``
and ``lse_i = logsumexp(q K_i^T s)``. Then ``lse = logsumexp_i(lse_i)`` and ``o = sum_i exp(lse_i - lse) o_i``.
Everything here is fp32. A part with no keys has ``lse_i = -inf`` and weighs nothing.
"""

from __future__ import annotations

import torch

from ..fused import fused


@fused
def merge_partials(outs: torch.Tensor, lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge stacked partial attentions.

    outs: (P, B, H, T, D) fp32; lses: (P, B, H, T) fp32 (``-inf`` for a part without keys).
    Returns out (B, H, T, D) fp32 and lse (B, H, T) fp32.
    """
    lse = torch.logsumexp(lses, dim=0)
    # Rows that saw no key at all have lse = -inf; give them zero output instead of NaN.
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    weights = torch.exp(lses - safe.unsqueeze(0))  # (P, B, H, T)
    out = (weights.unsqueeze(-1) * outs).sum(dim=0)
    return out, lse


@fused
def merge_two(o1, l1, o2, l2) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partials: o (B, H, T, D), l (B, H, T); computed and returned in fp32."""
    o1, l1, o2, l2 = o1.float(), l1.float(), o2.float(), l2.float()
    m = torch.maximum(l1, l2)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # both parts empty: zero output, lse -inf
    w1, w2 = torch.exp(l1 - m), torch.exp(l2 - m)
    s = w1 + w2
    out = (o1 * w1.unsqueeze(-1) + o2 * w2.unsqueeze(-1)) / torch.where(s > 0, s, torch.ones_like(s)).unsqueeze(-1)
    return out, m + torch.log(s)


class OnlineMerge:
    """Running merge for a stream of partials (ring attention steps), fp32, O(1) extra memory."""

    def __init__(self):
        self.out: torch.Tensor | None = None
        self.lse: torch.Tensor | None = None

    def add(self, out: torch.Tensor, lse: torch.Tensor, q_slice: slice | None = None) -> None:
        """Fold in a partial for all query rows, or for the rows ``q_slice`` of dim T only.

        out: (B, H, T', D); lse: (B, H, T') where T' is T or the length of q_slice.
        """
        out = out.float()
        lse = lse.float()
        if self.out is None:
            assert q_slice is None, "the first partial must cover every query row"
            self.out, self.lse = out.clone(), lse.clone()
            return
        if q_slice is None:
            self.out, self.lse = merge_two(self.out, self.lse, out, lse)
        else:
            o, l = merge_two(self.out[:, :, q_slice], self.lse[:, :, q_slice], out, lse)
            self.out[:, :, q_slice] = o
            self.lse[:, :, q_slice] = l


@fused
def pack(out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) + (B, H, T) -> one fp32 tensor (B, H, T, D + 1), so one collective moves both."""
    return torch.cat((out.float(), lse.float().unsqueeze(-1)), dim=-1)


def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., D + 1) -> out (..., D), lse (...)."""
    return packed[..., :-1], packed[..., -1]
