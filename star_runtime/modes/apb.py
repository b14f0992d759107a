"""APB-style passing blocks: star attention whose later blocks also see the most important tokens of every
earlier block, chosen by the query, training-free.

Star's blocks see only [anchor ; themselves], so a fact in block 2 is invisible to block 3's encoding. Here
(after APB, ACL'25) every block passes a few of its tokens' KV to the blocks after it, layer by layer: block i
attends to [anchor ; passing tokens of blocks 0..i-1 ; itself causally]. Which tokens pass is decided by the
query, as SnapKV does: the query's tokens run behind each block (at their true positions after the context,
seeing [anchor ; passing ; the block ; themselves]), and at every layer and KV head a block's tokens are scored
by the attention the query pays them (softmax over the block's keys, summed over the query tokens and the
query heads of the KV head, averaged over a window of POOL neighbours); the top ``--passing_tokens`` pass (the
anchor's own tokens never: every block sees them already). Passing KV is exchanged between workers at every
layer (one all-gather) and dropped after phase 1; phase 2 (the query and every generated token over all
workers' full KV, merged exactly) is the common one.

What it is exactly: with --passing_tokens 0 it is star attention token for token; with --passing_tokens >= the
block size every block sees every token before it, i.e. dense causal attention. In between it approximates
dense better than star at a cost of (passing tokens x earlier blocks) extra keys per block and the query rows.
The context's KV depends on the query: nothing is reusable across queries (no block cache).

--query_before_blocks (off by default): APB also carries the query in the anchor, so every block is encoded
knowing the question. Here every block after the first sees the query's tokens encoded just before it
(positions start - T .. start - 1, seeing [anchor ; passing ; themselves]); their KV is dropped after phase 1.
This changes what the blocks encode (neither star nor dense any more at passing 0 or the block size): an
approximation of a prompt that asks before each block, measured against dense on RULER in docs/accuracy.md.
"""

from __future__ import annotations

import torch

from ..attention.hooks import attention_state
from ..attention.partial import partial_attention
from ..kv.shard import ContextShard
from ..models.loader import num_layers
from .base import run_decoder
from .star import StarMode, StarPlan, anchor_shape, config_plan, merge_two_like, start_anchor

POOL = 7  # SnapKV's window: a token's score is the mean over its neighbours, so spans pass, not lone tokens


def passing_count(cfg, plan: StarPlan) -> int:
    """--passing_tokens; -1 is one eighth of the block."""
    return max(1, plan.block_size // 8) if cfg.passing_tokens < 0 else cfg.passing_tokens


def select_passing(qq: torch.Tensor, kb: torch.Tensor, scale: float, count: int, skip: int = 0,
                   pool: int = POOL) -> torch.Tensor:
    """The ``count`` keys of one block the query attends to most, per KV head, in token order.

    qq: (Hq, T, D) the query rows' queries at this layer; kb: (Hkv, n, D) the block's keys. Keys [0, skip)
    (anchor tokens) are never chosen. Returns (Hkv, k) long indices into the block, k = min(count, n - skip).
    """
    hq, t, d = qq.shape
    hkv, n, _ = kb.shape
    k = min(count, n - skip)
    if k <= 0:
        return torch.empty(hkv, 0, dtype=torch.long, device=kb.device)
    if k == n - skip:  # every candidate passes: no scoring needed
        return torch.arange(skip, n, device=kb.device).expand(hkv, -1)
    g = hq // hkv
    logits = torch.einsum("hgtd,hnd->hgtn", qq.float().view(hkv, g, t, d), kb.float()) * scale
    score = torch.softmax(logits, dim=-1).sum(dim=(1, 2))  # (Hkv, n)
    if pool > 1:
        score = torch.nn.functional.avg_pool1d(score.unsqueeze(1), pool, 1, pool // 2,
                                               count_include_pad=False).squeeze(1)[:, :n]
    score[:, :skip] = float("-inf")
    return torch.topk(score, k, dim=-1).indices.sort(dim=-1).values


class PassingBlocks:
    """Attention state of one worker's phase-1 forward: its blocks, each followed by the query's tokens, as
    one flattened sequence (blocks may differ in length).

    q: (1, Hq, N, D); k, v: (1, Hkv, N, D), N = sum over the worker's blocks of (n_b + T). segments: per block
    (global index, start in the sequence, n_b, keys not to pass). anchor: a SharedAnchor (None: every block of
    the context is block 0). The blocks' own KV goes to ``shard``; the query rows' output only carries the query
    to the next layer's scoring.
    """

    def __init__(self, shard: ContextShard, anchor, segments, t: int, count: int, group, blocks_of_rank,
                 before: dict | None = None):
        """before: block index -> start in the sequence of the query's tokens encoded before that block
        (--query_before_blocks), each T long."""
        self.shard, self.anchor, self.segments, self.t, self.count = shard, anchor, segments, t, count
        self.group, self.blocks_of_rank = group, blocks_of_rank
        self.per_rank = max(len(b) for b in blocks_of_rank)
        self.before = before or {}

    def _exchange(self, picked):
        """Every worker's passing KV, by global block index: {i: (k, v) each (Hkv, P_i, D)}."""
        if self.group.world_size == 1:
            return picked
        hkv, d = self.shape
        buf = torch.zeros((self.per_rank, 2, hkv, self.count, d), dtype=self.dtype, device=self.device)
        lens = torch.zeros(self.per_rank, dtype=torch.long, device=self.device)
        for j, (i, _, _, _) in enumerate(self.segments):
            if i in picked:
                kk, vv = picked[i]
                buf[j, 0, :, : kk.shape[1]] = kk
                buf[j, 1, :, : vv.shape[1]] = vv
                lens[j] = kk.shape[1]
        all_buf, all_lens = self.group.all_gather(buf), self.group.all_gather(lens).tolist()
        out = {}
        for r, blocks in enumerate(self.blocks_of_rank):
            for j, i in enumerate(blocks):
                n = all_lens[r][j]
                out[i] = (all_buf[r, j, 0, :, :n], all_buf[r, j, 1, :, :n])
        return out

    def attend(self, layer: int, q, k, v, scale: float) -> torch.Tensor:
        _, hq, _, d = q.shape
        hkv = k.shape[1]
        self.shape, self.dtype, self.device = (hkv, d), k.dtype, k.device
        t = self.t
        picked = {}
        for i, s, n, skip in self.segments:
            idx = select_passing(q[0, :, s + n: s + n + t], k[0, :, s: s + n], scale, self.count, skip)
            picked[i] = (k[0, :, s: s + n].gather(1, idx.unsqueeze(-1).expand(-1, -1, d)),
                         v[0, :, s: s + n].gather(1, idx.unsqueeze(-1).expand(-1, -1, d)))
        passing = self._exchange(picked) if self.count > 0 else {}
        out = torch.empty_like(q)
        ak = av = None
        if self.anchor is not None and any(i > 0 for i, *_ in self.segments):
            ak, av = self.anchor.get(layer)
        for i, s, n, _ in self.segments:
            qb, kb, vb = q[:, :, s: s + n], k[:, :, s: s + n], v[:, :, s: s + n]
            seen_k = ([ak[0]] if i > 0 else []) + [passing[j][0] for j in range(i) if j in passing]
            seen_v = ([av[0]] if i > 0 else []) + [passing[j][1] for j in range(i) if j in passing]
            if i in self.before:  # the query encoded before the block: [anchor ; passing] and itself causally
                p0 = self.before[i]
                qp, kp, vp = q[:, :, p0: p0 + t], k[:, :, p0: p0 + t], v[:, :, p0: p0 + t]
                op, lp = partial_attention(qp, kp, vp, scale, causal=True, native_out=True)
                if seen_k:
                    oc, lc = partial_attention(qp, torch.cat(seen_k, dim=1).unsqueeze(0),
                                               torch.cat(seen_v, dim=1).unsqueeze(0), scale, native_out=True)
                    op, _ = merge_two_like(op, lp, oc, lc)
                out[:, :, p0: p0 + t] = op.to(q.dtype)
                seen_k, seen_v = seen_k + [kp[0]], seen_v + [vp[0]]
            ob, lb = partial_attention(qb, kb, vb, scale, causal=True, native_out=True)
            ck = torch.cat(seen_k, dim=1).unsqueeze(0) if seen_k else None
            cv = torch.cat(seen_v, dim=1).unsqueeze(0) if seen_v else None
            if ck is not None and ck.shape[2] > 0:
                oc, lc = partial_attention(qb, ck, cv, scale, native_out=True)
                ob, lb = merge_two_like(ob, lb, oc, lc)
            out[:, :, s: s + n] = ob.to(q.dtype)
            if t:  # the query rows: [anchor ; passing ; the block] and themselves causally
                qq, kq, vq = q[:, :, s + n: s + n + t], k[:, :, s + n: s + n + t], v[:, :, s + n: s + n + t]
                wk = kb if ck is None else torch.cat((ck, kb), dim=2)
                wv = vb if cv is None else torch.cat((cv, vb), dim=2)
                oq, lq = partial_attention(qq, kq, vq, scale, causal=True, native_out=True)
                ow, lw = partial_attention(qq, wk, wv, scale, native_out=True)
                oq, _ = merge_two_like(oq, lq, ow, lw)
                out[:, :, s + n: s + n + t] = oq.to(q.dtype)
        self.shard.append(layer, torch.cat([k[:, :, s: s + n] for _, s, n, _ in self.segments], dim=2),
                          torch.cat([v[:, :, s: s + n] for _, s, n, _ in self.segments], dim=2))
        return out


@torch.inference_mode()
def encode_apb(model, ctx: torch.Tensor, query: torch.Tensor, plan: StarPlan, count: int, group,
               prefill_layers: str = "auto", query_before: bool = False) -> ContextShard:
    """Phase 1 of this rank's blocks with passing. ctx: (L,) long, query: (T,) long, on the model device.

    As star: rank 0 encodes the anchor [0, A) once and broadcasts it layer by layer; with A == S block 0 is the
    anchor (no token of it passes, it is not encoded again). Then one forward of the rank's blocks, each
    followed by the query's tokens (positions L..L+T-1), every rank in step layer by layer (the passing
    exchange is a collective, so a rank without blocks takes part too).
    """
    layers = num_layers(model)
    shard = ContextShard(layers)
    s, a, length = plan.block_size, plan.anchor, plan.length
    dev = ctx.device
    anchor, mine = start_anchor(model, ctx, plan, group, shard, prefill_layers)
    blocks_of_rank = [list(b) for b in plan.blocks]
    if plan.num_blocks > 1 and a == s:
        blocks_of_rank[0] = blocks_of_rank[0][1:]  # block 0 is the anchor: it passes nothing
    if plan.num_blocks == 1:
        count = 0
    t = query.numel() if count > 0 or query_before else 0  # nothing passes: no query rows (star)
    ids, pos, segments, at = [], [], [], 0
    before = {}
    for b in mine:
        n = min(s, length - b * s)
        if query_before and b > 0:  # the query's tokens right before the block
            before[b] = at
            ids.append(query[:t])
            pos.append(torch.arange(b * s - t, b * s, device=dev))
            at += t
        ids += [ctx[b * s: b * s + n], query[:t]]
        pos += [torch.arange(b * s, b * s + n, device=dev), torch.arange(length, length + t, device=dev)]
        segments.append((b, at, n, a if b == 0 else 0))
        at += n + t
    if not segments and (group.world_size == 1 or count == 0):
        if anchor is not None:
            anchor.finish()
        return shard
    state = PassingBlocks(shard, anchor, segments, t, count, group, blocks_of_rank, before)
    with attention_state(state):
        if segments:
            run_decoder(model, torch.cat(ids).unsqueeze(0), torch.cat(pos).unsqueeze(0), prefill_layers)
        else:  # no blocks here: take part in every layer's exchange with nothing to pass
            _, _, hkv, _, d = anchor_shape(model, 1)
            state.shape, state.dtype, state.device = (hkv, d), model.dtype, dev
            for _ in range(layers):
                state._exchange({})
    if anchor is not None:
        anchor.finish()
    return shard


class ApbMode(StarMode):
    name = "apb"

    def encode(self, worker, req, cfg):
        ctx = torch.tensor(req.context_ids, dtype=torch.long, device=worker.device)
        query = torch.tensor(req.query_ids, dtype=torch.long, device=worker.device)
        plan = config_plan(cfg, ctx.numel(), worker.group.world_size)
        return encode_apb(worker.model, ctx, query, plan, passing_count(cfg, plan), worker.group,
                          cfg.prefill_layers, cfg.query_before_blocks)

    def record(self, cfg, req, reply, world):
        plan = config_plan(cfg, len(req.context_ids), world)
        return {"block_size": plan.block_size, "passing_tokens": passing_count(cfg, plan)}

    def settings(self, cfg):
        return {**super().settings(cfg), "passing_tokens": cfg.passing_tokens,
                "query_before_blocks": cfg.query_before_blocks}

    def run_tag(self, cfg):
        """star's tag and _p<passing tokens> (_pauto for one eighth of the block), _qb with the query before
        every block."""
        return (super().run_tag(cfg) + ("_pauto" if cfg.passing_tokens < 0 else f"_p{cfg.passing_tokens}")
                + ("_qb" if cfg.query_before_blocks else ""))
