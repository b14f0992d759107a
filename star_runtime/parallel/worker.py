"""One worker of the SPMD runtime: holds the model and its KV shard, runs phase 1 and phase 2 in lockstep.

The same class runs inside a Ray actor (parallel/ray_launcher.py), inside a torchrun/srun process
(env:// rendezvous), or in-process for a single worker.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from ..config import RunConfig
from ..models.loader import ModelSource, load_model, load_tokenizer, resolve_dtype
from ..phase1 import encode_context
from ..phase2 import generate
from ..sampling import Sampler, StopChecker, eos_ids
from .group import Group, local_device


@dataclass
class Request:
    """One sample, tokenized by the engine. Token ids are plain lists so they travel cheaply."""

    index: int
    context_ids: list[int]
    query_ids: list[int]
    max_new_tokens: int
    seed: int = 0
    keep_logits: bool = False
    extra_eos: list[int] = field(default_factory=list)  # the tokenizer's EOS, if the model config lacks it


@dataclass
class Reply:
    index: int
    tokens: list[int]
    stopped_by: str
    phase1_s: float
    first_token_s: float
    decode_s: float
    steps: int
    shard_tokens: list[int] = field(default_factory=list)  # context tokens held by each worker
    logits: list = field(default_factory=list)


class Worker:
    def __init__(self, cfg: RunConfig, source: ModelSource, rank: int, world_size: int,
                 init_method: str | None = None, threads: int | None = None):
        self.cfg = cfg
        if world_size > 1:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # one progress bar per worker would only be noise
        self.device = local_device(cfg.device)
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        self.group = Group.init(rank, world_size, self.device, init_method, cfg.collective_timeout_s)
        self.model = load_model(source, resolve_dtype(cfg.dtype, cfg.device), self.device)
        self.source = source
        self.tokenizer = None  # loaded on the query host only if stop words are asked for
        self.eos = eos_ids(self.model, None)
        pad = getattr(self.model.config, "pad_token_id", None)
        self.pad_id = pad if isinstance(pad, int) else 0

    def info(self) -> dict:
        return {"rank": self.group.rank, "pid": os.getpid(), "device": str(self.device),
                "hostname": os.uname().nodename}

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, req: Request) -> Reply:
        return self.run_batch([req])[0]

    def run_batch(self, reqs: list[Request]) -> list[Reply]:
        """Phase 1 for each sample, then phase 2 for all of them together; every worker returns the same."""
        g = self.group
        shards, phase1 = [], []
        for req in reqs:
            ctx = torch.tensor(req.context_ids, dtype=torch.long, device=self.device)
            g.barrier()
            t0 = time.perf_counter()
            shards.append(encode_context(self.model, self.cfg, g, ctx, self.pad_id))
            self._sync()
            g.barrier()
            phase1.append(time.perf_counter() - t0)
        samplers = [Sampler(self.cfg.temperature, self.cfg.top_p, self.cfg.seed + r.seed) for r in reqs]
        stops = [None] * len(reqs)
        if g.is_host and self.cfg.stop_words:
            self.tokenizer = self.tokenizer or load_tokenizer(self.source)
            stops = [StopChecker(self.tokenizer, self.cfg.stop_words) for _ in reqs]
        eos = self.eos | {e for r in reqs for e in r.extra_eos}
        queries = [torch.tensor(r.query_ids, dtype=torch.long, device=self.device) for r in reqs]
        gens = generate(self.model, g, shards, queries, [len(r.context_ids) for r in reqs],
                        [r.max_new_tokens for r in reqs], samplers, stops, eos,
                        keep_logits=any(r.keep_logits for r in reqs))
        counts = g.all_gather(torch.tensor([len(s) for s in shards], device=self.device)).T.tolist()
        return [Reply(r.index, gen.tokens, gen.stopped_by, p1, gen.first_token_s, gen.decode_s, gen.steps,
                      cnt, gen.logits) for r, gen, p1, cnt in zip(reqs, gens, phase1, counts)]

    def close(self):
        self.group.destroy()
