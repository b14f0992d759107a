"""One worker of the SPMD runtime: holds the model and its KV shard, runs phase 1 and phase 2 in lockstep.

The same class runs inside a Ray actor (parallel/ray_launcher.py), inside a torchrun/srun process
(env:// rendezvous), or in-process for a single worker.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

import torch

from ..attention.rope import RopeReencoder
from ..block_mode import BlockSpec, encode_blocks
from ..config import RunConfig
from ..kv.block_store import BlockStore, gib
from ..models.loader import ModelSource, load_model, load_tokenizer, resolve_dtype, text_config
from ..phase1 import encode_context
from ..phase2 import generate, resolve_decode_mode, sync_device
from ..sampling import Sampler, StopChecker, eos_ids
from .. import progress
from .group import Group, local_devices
from .liveness import Heartbeat, PeerWatch, connect_store


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
    blocks: list[BlockSpec] | None = None  # block mode: the local blocks (context_ids is their concatenation)
    prefill_logits: bool = False  # return the logits of every query position (teacher-forcing checks)


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
    cache: dict | None = None  # block mode: this sample's block-cache counts, summed over workers
    prefill_logits: object = None  # (Tq, V) fp32, when asked


def flush_on_signals(flush) -> None:
    """On SIGTERM / SIGINT, ``flush()`` (write what must not be lost) before the process goes the way it would
    have gone (the previous handler, else exit). Only from the main thread, where handlers can be set."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)

        def handler(signum, frame, prev=prev):
            try:
                flush()
            finally:
                if callable(prev):
                    prev(signum, frame)
                else:
                    raise SystemExit(128 + signum)

        signal.signal(sig, handler)


class Worker:
    def __init__(self, cfg: RunConfig, source: ModelSource, rank: int, world_size: int,
                 init_method: str | None = None, threads: int | None = None,
                 heartbeat_store: tuple[str, int] | None = None):
        """heartbeat_store: (host, port) of the driver's store (Ray); under torchrun (init_method env://) the
        ranks watch each other through the rendezvous store instead."""
        self.cfg = cfg
        self.watch = None
        if heartbeat_store is not None:
            host, port = heartbeat_store
            self.watch = Heartbeat(lambda: connect_store(host, port), rank)
        elif init_method == "env://" and world_size > 1 and cfg.stall_timeout_s > 0:
            self.watch = PeerWatch(rank, world_size, cfg.stall_timeout_s)
        if world_size > 1:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # one progress bar per worker would only be noise
        self.devices = local_devices(cfg.device, cfg.gpus_per_worker)
        self.device = self.devices[0]
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        self.group = Group.init(rank, world_size, self.device, init_method, cfg.collective_timeout_s)
        self.model = load_model(source, resolve_dtype(cfg.dtype, cfg.device), self.device, self.devices)
        self.source = source
        self.tokenizer = None  # loaded on the query host only if stop words are asked for
        self.eos = eos_ids(self.model, None)
        pad = getattr(self.model.config, "pad_token_id", None)
        self.pad_id = pad if isinstance(pad, int) else 0
        self.decode = resolve_decode_mode(cfg.decode, self.model, self.device, len(self.devices))
        self.store: BlockStore | None = None
        self.reencoder: RopeReencoder | None = None
        if cfg.attn_type == "block":
            self._block_setup()

    def _block_setup(self) -> None:
        cfg, rank = self.cfg, self.group.rank
        disk = os.path.join(cfg.block_cache_disk_dir, f"rank{rank}") if cfg.block_cache_disk_dir else None
        text = text_config(self.model.config)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.store = BlockStore(self.device, gib(cfg.block_cache_gpu_gib), gib(cfg.block_cache_cpu_gib),
                                disk, gib(cfg.disk_budget_gib), dtype=self.model.dtype,
                                expect=(text.num_hidden_layers, text.num_key_value_heads, head_dim))
        self.reencoder = RopeReencoder(self.model)

    def _encode(self, req: Request):
        """Phase 1 for one sample: block mode (cached blocks, re-encoded) or dense / star / ring."""
        if req.blocks is not None:
            if self.store is None:
                self._block_setup()
            total = len(req.context_ids) + len(req.query_ids)
            return encode_blocks(self.model, req.blocks, self.group.rank, self.store, self.reencoder, total,
                                 self.pad_id)
        ctx = torch.tensor(req.context_ids, dtype=torch.long, device=self.device)
        return encode_context(self.model, self.cfg, self.group, ctx, self.pad_id)

    def _cache_counts(self) -> list[int]:
        if self.store is None:
            return [0, 0, 0, 0, 0]
        st = self.store.stats
        return [sum(st.hits.values()), st.misses, st.hit_tokens, st.miss_tokens, sum(st.evictions.values())]

    def info(self) -> dict:
        return {"rank": self.group.rank, "pid": os.getpid(), "device": str(self.device),
                "hostname": os.uname().nodename}

    def run(self, req: Request) -> Reply:
        return self.run_batch([req])[0]

    def run_batch(self, reqs: list[Request]) -> list[Reply]:
        """Phase 1 for each sample, then phase 2 for all of them together; every worker returns the same."""
        with progress.busy():
            return self._run_batch(reqs)

    def _run_batch(self, reqs: list[Request]) -> list[Reply]:
        g = self.group
        shards, phase1, cache = [], [], []
        for req in reqs:
            before = self._cache_counts()
            g.barrier()
            t0 = time.perf_counter()
            shards.append(self._encode(req))
            sync_device(self.device)
            g.barrier()
            phase1.append(time.perf_counter() - t0)
            cache.append([a - b for a, b in zip(self._cache_counts(), before)])
        samplers = [Sampler(self.cfg.temperature, self.cfg.top_p, self.cfg.seed + r.seed) for r in reqs]
        stops = [None] * len(reqs)
        if g.is_host and self.cfg.stop_words:
            self.tokenizer = self.tokenizer or load_tokenizer(self.source)
            stops = [StopChecker(self.tokenizer, self.cfg.stop_words) for _ in reqs]
        eos = self.eos | {e for r in reqs for e in r.extra_eos}
        queries = [torch.tensor(r.query_ids, dtype=torch.long, device=self.device) for r in reqs]
        gens = generate(self.model, g, shards, queries, [len(r.context_ids) for r in reqs],
                        [r.max_new_tokens for r in reqs], samplers, stops, eos,
                        keep_logits=any(r.keep_logits for r in reqs), decode=self.decode,
                        prefill_logits=any(r.prefill_logits for r in reqs))
        counts = g.all_gather(torch.tensor([len(s) for s in shards], device=self.device)).T.tolist()
        blocks = [r.blocks is not None for r in reqs]
        if any(blocks):  # sum every worker's cache counts: (W, samples, 5) -> (samples, 5)
            cache = g.all_gather(torch.tensor(cache, device=self.device)).sum(0).tolist()
        names = ("hits", "misses", "hit_tokens", "miss_tokens", "evictions")
        return [Reply(r.index, gen.tokens, gen.stopped_by, p1, gen.first_token_s, gen.decode_s, gen.steps,
                      cnt, gen.logits, dict(zip(names, c)) if b else None, gen.prefill_logits)
                for r, gen, p1, cnt, c, b in zip(reqs, gens, phase1, counts, cache, blocks)]

    def cache_summary(self) -> dict | None:
        return self.store.summary() if self.store is not None else None

    def flush(self) -> None:
        """Everything this worker must not lose is on disk (the block cache's pending writes)."""
        if self.store is not None:
            self.store.flush()

    def close(self):
        if self.store is not None:
            self.store.close()
        if self.watch is not None:
            self.watch.stop()
        self.group.destroy()
