"""Phase 2: the query and every generated token attend to all workers' KV exactly (star and ring alike).

All workers run the same forwards (SPMD); attention/phase2.py merges the partial attentions. The query host
samples the next tokens and broadcasts them with stop flags, so every worker takes the same path.

Several samples decode together: each sample's query is prefilled on its own (lengths differ), then every
unfinished sample adds one token per step in one batched forward, with one collective per layer for the
whole batch. Finished samples leave the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .attention.hooks import attention_state
from .attention.phase2 import GlobalAttention
from .kv.shard import ContextShard, QueryCache
from .models.loader import num_layers
from .progress import tick

EOS, STOP_WORD = 1, 2


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    first_token_s: float = 0.0  # this sample's query prefill until its first token is known
    decode_s: float = 0.0  # wall time of the decode steps this sample took part in
    stopped_by: str = "length"  # eos | stop_word | length
    steps: int = 0  # forwards: 1 query prefill + (steps - 1) decode steps
    logits: list = field(default_factory=list)  # per step (V,) fp32 on the CPU, host only, if asked
    prefill_logits: torch.Tensor | None = None  # (Tq, V) of the query prefill, host only, if asked


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)



DECODE_MODES = ("auto", "eager", "static", "graph")


def resolve_decode_mode(mode: str, model, device: torch.device, num_devices: int = 1) -> str:
    """auto: a CUDA graph per batch on GPUs (unless the RoPE type needs the host), eager elsewhere; static
    (same fixed shapes, not captured) for a model split over several GPUs."""
    from .decode_step import graph_capturable

    if mode == "auto":
        if device.type == "cuda" and num_devices > 1:
            return "static"
        return "graph" if device.type == "cuda" and graph_capturable(model) else "eager"
    if mode == "graph" and num_devices > 1:
        raise ValueError("--decode graph captures one GPU's stream; a model split over several GPUs decodes "
                         "with --decode static")
    if mode == "graph" and (device.type != "cuda" or not graph_capturable(model)):
        raise ValueError("--decode graph needs a CUDA device and a RoPE type without host-side updates; "
                         "use --decode static or eager")
    return mode


@torch.inference_mode()
def generate(model, group, shards: list[ContextShard], queries: list[torch.Tensor], starts: list[int],
             max_new: list[int], samplers, stop_checkers, eos: set[int], keep_logits: bool = False,
             decode: str = "eager", prefill_logits: bool = False) -> list[Generation]:
    """Query prefill then decode for a batch of samples.

    queries[b]: (Tq_b,) long on the model device; starts[b]: sample b's context length (its first query
    position); max_new[b]: its token cap; samplers/stop_checkers: per sample, used on the host only.
    decode: eager (shapes shrink as samples finish), static (fixed shapes) or graph (static, replayed from
    a CUDA graph). prefill_logits: the host also keeps the logits of every query position (Tq, V) (to
    compare with a teacher-forced forward). Returns per sample the generated ids (without EOS), identical
    on every worker.
    """
    dev = queries[0].device
    n = len(queries)
    host = group.is_host
    # static decode keeps finished samples in the batch, so every cache must hold the longest run
    cap = [q.numel() + (max(max_new) if decode != "eager" else m) for q, m in zip(queries, max_new)]
    caches = [QueryCache(num_layers(model), c) for c in cap] if host else None
    gens = [Generation() for _ in range(n)]
    last = [0] * n
    pos = [s + q.numel() for s, q in zip(starts, queries)]  # next position per sample
    running = [True] * n

    def forward(batch: list[int], ids: torch.Tensor, position_ids: torch.Tensor, keep_all: bool = False):
        state = GlobalAttention(group, [shards[b] for b in batch], [caches[b] for b in batch] if host else None)
        with attention_state(state):
            logits = model(input_ids=ids, position_ids=position_ids, use_cache=False,
                           logits_to_keep=0 if keep_all else 1).logits
        if keep_all and host:
            gens[batch[0]].prefill_logits = logits[0].float().cpu()
        if host:
            for b in batch:
                caches[b].commit(ids.shape[1])
        return logits[:, -1]

    def decide(batch: list[int], logits: torch.Tensor | None) -> None:
        """Host picks each sample's token and stop flag; every worker receives them."""
        msg = torch.zeros(len(batch), 2, dtype=torch.long, device=dev)
        if host:
            rows = []
            # greedy batch: one argmax and one device-to-host copy for every sample
            greedy = None
            if all(samplers[b].temperature == 0 for b in batch):
                greedy = torch.argmax(logits, dim=-1).tolist()
            for i, b in enumerate(batch):
                if keep_logits:
                    gens[b].logits.append(logits[i].float().cpu())
                tok = greedy[i] if greedy is not None else samplers[b](logits[i])
                stop = EOS if tok in eos else 0
                if not stop and stop_checkers[b] is not None and stop_checkers[b](gens[b].tokens + [tok]):
                    stop = STOP_WORD
                rows.append((tok, stop))
            msg.copy_(torch.tensor(rows, dtype=torch.long))
        group.broadcast(msg, group.host)
        for (tok, stop), b in zip(msg.tolist(), batch):
            gens[b].steps += 1
            if stop != EOS:
                gens[b].tokens.append(tok)
            last[b] = tok
            if stop:
                gens[b].stopped_by = "eos" if stop == EOS else "stop_word"
                running[b] = False
            elif gens[b].steps >= max_new[b]:
                running[b] = False

    for b in range(n):  # query prefill, one sample at a time
        t0 = time.perf_counter()
        q = queries[b]
        p = torch.arange(starts[b], starts[b] + q.numel(), device=dev).unsqueeze(0)
        decide([b], forward([b], q.unsqueeze(0), p, keep_all=prefill_logits))
        sync_device(dev)
        gens[b].first_token_s = time.perf_counter() - t0

    step = None  # static / graph: one fixed-shape step for the whole batch (finished samples ride along)
    if decode != "eager" and any(running):
        from .decode_step import DecodeStep

        step = DecodeStep(model, group, shards, caches, last, pos, use_graph=decode == "graph")
    while any(running):  # decode, every unfinished sample one token per step
        tick()
        batch = [b for b in range(n) if running[b]]
        t0 = time.perf_counter()
        if step is not None:
            logits = step(torch.tensor(last, dtype=torch.long, device=dev))
            decide(batch, logits[batch] if host else None)
        else:
            ids = torch.tensor([[last[b]] for b in batch], dtype=torch.long, device=dev)
            p = torch.tensor([[pos[b]] for b in batch], dtype=torch.long, device=dev)
            decide(batch, forward(batch, ids, p))
            for b in batch:
                pos[b] += 1
        sync_device(dev)
        dt = time.perf_counter() - t0
        for b in batch:
            gens[b].decode_s += dt
    return gens
