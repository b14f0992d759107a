"""One worker of the SPMD runtime: holds the model and its KV shards, runs phase 1 and phase 2 in lockstep.

The same class runs inside a Ray actor (parallel/ray_launcher.py), inside a torchrun/srun process
(env:// rendezvous), or in-process for a single worker. Its one entry is ``run_batch(requests, options)``.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field

import torch

from .. import progress
from ..attention.pages import usable as pages_usable
from ..attention.rope import frame_crossing, rope_frame
from ..config import RunConfig
from ..errors import ConfigError
from ..decode import (Arenas, PrefillStep, Sequences, arena_path, generate, query_bucket,
                      resolve_decode_mode, sync_device)
from ..models import skinny
from ..models.fuse import fuse_projections
from ..models.loader import ModelSource, head_dim, load_model, load_tokenizer, resolve_dtype
from ..modes import get_mode
from ..sampling import Sampler, StopChecker, eos_ids
from .group import Group, local_devices
from .liveness import Heartbeat, PeerWatch, connect_store


@dataclass
class Request:
    """One sample, tokenized by the engine. Token ids are plain lists so they travel cheaply.

    mode: the attention mode that encodes its context (modes.MODES; None: the run's --attn_type); blocks:
    block mode's local blocks (modes/block.py BlockSpec; context_ids is their concatenation)."""

    index: int
    context_ids: list[int]
    query_ids: list[int]
    max_new_tokens: int
    mode: str | None = None
    seed: int = 0
    keep_logits: bool = False
    extra_eos: list[int] = field(default_factory=list)  # the tokenizer's EOS, if the model config lacks it
    blocks: list | None = None
    prefill_logits: bool = False  # return the logits of every query position (teacher-forcing checks)
    # per-request sampling and stop words (a server's requests); None: the run's settings
    temperature: float | None = None
    top_p: float | None = None
    stop_words: list[str] | None = None


@dataclass
class Reply:
    index: int
    tokens: list[int]
    stopped_by: str
    phase1_s: float  # phase 1 until its device work is done (a phase 1 that queued none: its host time)
    first_token_s: float  # this sample's query prefill to its first token
    decode_s: float
    steps: int
    ttft_s: float = 0.0  # from the call's start (run_batch) to this sample's first token: everything it waited
    shard_tokens: list[int] = field(default_factory=list)  # context tokens held by each worker
    logits: list = field(default_factory=list)  # per step (V,) fp32, when asked
    cache: dict | None = None  # block mode: this sample's block-cache counts, summed over workers
    prefill_logits: object = None  # (Tq, V) fp32, when asked


@dataclass(frozen=True)
class Options:
    """Per-call choices of one run_batch (None: the run's setting): the star layout, the decode path, and
    whether static decode attends over one padded copy of the batch's KV (None: when it fits)."""

    block_size: int | None = None
    anchor_block_size: int | None = None
    num_blocks: int | None = None
    decode: str | None = None
    batched_kv: bool | None = None

    def layout(self, cfg: RunConfig) -> RunConfig:
        """The run's settings with this call's layout overrides."""
        over = {k: v for k, v in (("block_size", self.block_size), ("anchor_block_size", self.anchor_block_size),
                                  ("num_blocks", self.num_blocks)) if v is not None}
        return cfg.replace(**over) if over else cfg


def flush_on_signals(flush) -> None:
    """On SIGTERM / SIGINT, ``flush()`` (write what must not be lost) before the process goes the way it would
    have gone (the previous handler, else exit). Only from the main thread, where handlers can be set."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)

        def handler(signum, frame, prev=prev):
            try:  # in a thread: the interrupted main thread may hold a lock the flush needs
                t = threading.Thread(target=flush, daemon=True)
                t.start()
                t.join(60)
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
        if self.device.type == "cuda":  # process-wide: every matmul of this worker's process
            torch.backends.cuda.preferred_blas_library("cublas" if cfg.blas == "cublas" else "cublaslt")
            skinny.enable(cfg.blas == "auto")  # auto: the Triton kernel for a few rows where it was tuned faster
        self.group = Group.init(rank, world_size, self.device, init_method, cfg.collective_timeout_s)
        self.model = load_model(source, resolve_dtype(cfg.dtype, cfg.device), self.device, self.devices)
        if not cfg.unfused_projections and len(self.devices) == 1:
            fuse_projections(self.model)  # q/k/v and gate/up one matmul each (a split worker's layers stay stock)
        self.source = source
        self.tokenizer = None  # loaded on the query host only if stop words are asked for
        self.eos = set() if cfg.ignore_eos else eos_ids(self.model, None)
        pad = getattr(self.model.config, "pad_token_id", None)
        self.pad_id = pad if isinstance(pad, int) else 0
        self._states: dict = {}
        self.arenas = Arenas()  # phase-2 KV and CUDA graphs of one request at a time, kept across requests
        self._arena_call = False
        mode = get_mode(cfg.attn_type)
        if mode.worker_state is not None:  # set up before the first request (a block store indexes its disk tier)
            self.mode_state(mode.name, mode.worker_state)

    def context_rows(self, req: Request):
        """The buffer phase 2 will attend over for ``req`` (an Arena's rows), for phase 1 to write the KV into,
        or None when this call does not run over an arena."""
        if not self._arena_call:
            return None
        if self._arena_call is not True:  # the arena a server chose for this request
            return self._arena_call.rows
        return self.arenas.for_request(self.model, len(req.context_ids), len(req.query_ids), req.max_new_tokens,
                                       self.device).rows

    def defers_context(self) -> bool:
        """Whether phase 1 may leave moving cached KV into the arena until after the first token: a call over
        an arena (a batch's or a server newcomer's), whose query prefill then attends the cached entries in
        place; any other reader of the arena gathers first (kv/shard.py settle)."""
        return self._arena_call is not False and self._arena_call is not None

    def mode_state(self, name: str, factory):
        """This worker's state for mode ``name`` (e.g. block mode's store), made by factory(worker) once."""
        if name not in self._states:
            self._states[name] = factory(self)
        return self._states[name]

    def run_batch(self, reqs: list[Request], options: Options | None = None) -> list[Reply]:
        """Phase 1 for each sample, then phase 2 for all of them together; every worker returns the same."""
        started = time.perf_counter()
        with progress.busy():
            return self._run_batch(reqs, options or Options(), started)

    def _run_batch(self, reqs: list[Request], opts: Options, started: float) -> list[Reply]:
        g = self.group
        cfg = opts.layout(self.cfg)
        decode = resolve_decode_mode(opts.decode or cfg.decode, self.model, self.device, len(self.devices))
        self._arena_call = (arena_path(g.world_size, len(reqs), decode, self.model)
                            and not any(r.prefill_logits for r in reqs))
        shards, phase1, counts = [], [], []
        for req in reqs:
            prompt = len(req.context_ids) + len(req.query_ids)
            switch = frame_crossing(self.model.config, prompt, prompt + req.max_new_tokens)
            if switch is not None:  # the engine refuses these first, naming the sample
                raise ConfigError(f"sample {req.index}: the prompt ({prompt} tokens) would grow past {switch} while "
                                  "generating, where this model's LongRoPE switches to its long factors; lower "
                                  "the tokens to generate or lengthen the prompt")
        for req in reqs:
            mode = get_mode(req.mode or cfg.attn_type)
            before = mode.counters(self)
            g.barrier()
            made = self.arenas.made
            t0 = time.perf_counter()
            with rope_frame(self.model, len(req.context_ids) + len(req.query_ids)):  # the prompt's RoPE everywhere
                shards.append(mode.encode(self, req, cfg))
            # one worker whose phase 1 queued nothing on the device (no new arena either): nothing to wait for
            if g.world_size > 1 or shards[-1].device_work or self.arenas.made != made:
                sync_device(self.device)
            g.barrier()
            phase1.append(time.perf_counter() - t0)
            after = mode.counters(self)
            counts.append(None if before is None else {k: after[k] - before[k] for k in after})
        samplers = [self._sampler(r, cfg) for r in reqs]
        stops = [self._stop_checker(r, cfg) for r in reqs]
        eos = self.eos | ({e for r in reqs for e in r.extra_eos} if not cfg.ignore_eos else set())
        # on the host: generate moves them where a path reads them on the device (not the in-place first token)
        queries = [torch.tensor(r.query_ids, dtype=torch.long) for r in reqs]
        gens = generate(self.model, g, shards, queries, [len(r.context_ids) for r in reqs],
                        [r.max_new_tokens for r in reqs], samplers, stops, eos,
                        keep_logits=any(r.keep_logits for r in reqs), decode=decode,
                        prefill_logits=any(r.prefill_logits for r in reqs), batched_kv=opts.batched_kv,
                        layers=cfg.prefill_layers, arenas=self.arenas, query_ids=[r.query_ids for r in reqs],
                        started=started, device=self.device)
        held = g.all_gather(torch.tensor([len(s) for s in shards], device=self.device)).T.tolist()
        caches = [None] * len(reqs)
        names = next((list(c) for c in counts if c is not None), None)
        if names:  # sum every worker's counters: (W, samples, n) -> (samples, n); the same on every worker
            local = [[c[k] for k in names] if c is not None else [0] * len(names) for c in counts]
            summed = g.all_gather(torch.tensor(local, device=self.device)).sum(0).tolist()
            caches = [dict(zip(names, s)) if c is not None else None for s, c in zip(summed, counts)]
        return [Reply(index=r.index, tokens=gen.tokens, stopped_by=gen.stopped_by, phase1_s=p1,
                      first_token_s=gen.first_token_s, decode_s=gen.decode_s, steps=gen.steps, ttft_s=gen.ttft_s,
                      shard_tokens=h,
                      logits=gen.logits, cache=c, prefill_logits=gen.prefill_logits)
                for r, gen, p1, h, c in zip(reqs, gens, phase1, held, caches)]

    def _sampler(self, r: Request, cfg: RunConfig) -> Sampler:
        t = cfg.temperature if r.temperature is None else r.temperature
        return Sampler(t, cfg.top_p if r.top_p is None else r.top_p, cfg.seed + r.seed)

    def _stop_checker(self, r: Request, cfg: RunConfig):
        words = cfg.stop_words if r.stop_words is None else r.stop_words
        if not self.group.is_host or not words:
            return None
        self.tokenizer = self.tokenizer or load_tokenizer(self.source)
        return StopChecker(self.tokenizer, words)

    # -- serving: requests join and leave the running batch at step boundaries ----------------------------
    def serve_step(self, close: list[int], new: list[Request], step: list[int], warm: int = 0) -> dict:
        """One scheduler iteration, on every worker alike: free the ``close`` sequences, run phase 1 and the
        query prefill of each ``new`` request (its index is its sequence id), then one decode step for the
        ``step`` sequences. ``warm``: before serving, capture the steps of batches up to that many sequences.
        Returns {"new": [(token, flag, phase1_s, first_token_s, cache counts)], "new_path": ["table" | "arena"
        | "batch" per newcomer], "step": [(token, flag)], "step_s": seconds, "step_path": "table" | "batch" |
        None}."""
        with progress.busy():
            decode = resolve_decode_mode(self.cfg.decode, self.model, self.device, len(self.devices))
            seqs = self.mode_state("serve", lambda w: Sequences(w.model, w.group, w.eos, w.cfg.prefill_layers,
                                                                decode))
            if warm:
                # every running sequence holds an arena: keep room for a batch of them
                self.arenas.keep = max(self.arenas.keep, 2 * warm)
                self.arenas.cpu_keep = max(self.arenas.cpu_keep, 2 * warm)
                pages = False  # block mode: its newcomers' first tokens may read cached passages in place
                if get_mode(self.cfg.attn_type).name == "block":  # the block store may still grow to its budget
                    st = self.mode_state("block", get_mode("block").worker_state)
                    store = st.store
                    self.arenas.claimed = lambda: max(0, store.budget["device"] - store.used["device"])
                    pages = pages_usable(self.model.dtype, self.device, head_dim(self.model.config),
                                         st.reencoder.rotary_dim)
                seqs.warm(warm, pages=pages)
            for i in close:
                seqs.remove(i)
            opened, paths = [], []
            for r in new:
                mode = get_mode(r.mode or self.cfg.attn_type)
                before = mode.counters(self)
                # on one worker with fixed-shape steps: phase 1 writes the KV into an arena of the request's
                # own, its query is prefilled there (one graph replay) and it decodes there with the others
                arena = None
                if arena_path(self.group.world_size, 1, decode, self.model):
                    arena = self.arenas.for_request(self.model, len(r.context_ids), len(r.query_ids),
                                                    r.max_new_tokens, self.device, must=False)
                self._arena_call = arena if arena is not None else False
                t0 = time.perf_counter()
                try:
                    with rope_frame(self.model, len(r.context_ids) + len(r.query_ids)):
                        shard = mode.encode(self, r, self.cfg)
                finally:
                    self._arena_call = False
                if self.group.world_size > 1 or shard.device_work:
                    sync_device(self.device)
                t1 = time.perf_counter()
                eos = self.eos | (set(r.extra_eos) if not self.cfg.ignore_eos else set())
                seqs.eos = eos
                sampler, stop = self._sampler(r, self.cfg), self._stop_checker(r, self.cfg)
                path = "batch"
                if arena is not None:
                    n = len(r.context_ids)
                    if len(shard) != n:  # its rows are its positions: the query's KV goes right after the context
                        raise RuntimeError(f"request {r.index}: phase 1 kept {len(shard)} context tokens of {n} on "
                                           "the one worker")
                    if shard.blocks is None:
                        arena.load(shard)
                    logits = seqs.table_prefill(arena, r.query_ids, n, shard, r.index)
                    path = "table" if shard.blocks is None else "pages"
                    if logits is None:  # a query longer than the table step's: the arena's own prefill
                        arena.load(shard)  # (gathers a deferred context first)
                        q = torch.tensor(r.query_ids, dtype=torch.long, device=self.device)
                        tb = query_bucket(q.numel())
                        if tb not in arena.prefills:
                            arena.prefills[tb] = PrefillStep(self.model, self.group, arena, tb, decode == "graph",
                                                             self.cfg.prefill_layers)
                        logits = arena.prefills[tb](q, n)
                        path = "arena"
                    tok, flag = seqs.adopt(r.index, arena, logits, n + len(r.query_ids), r.max_new_tokens, sampler,
                                           stop)
                else:
                    q = torch.tensor(r.query_ids, dtype=torch.long, device=self.device)
                    tok, flag = seqs.add(r.index, shard, q, len(r.context_ids), r.max_new_tokens, sampler, stop)
                if self.group.world_size > 1:  # (one worker: reading the token back waited for the device)
                    sync_device(self.device)
                after = mode.counters(self)
                counts = None if before is None else {k: after[k] - before[k] for k in after}
                if counts is not None and self.group.world_size > 1:  # each worker counts its own blocks
                    summed = self.group.all_gather(torch.tensor(list(counts.values()), device=self.device))
                    counts = dict(zip(counts, summed.sum(0).tolist()))
                opened.append((tok, flag, t1 - t0, time.perf_counter() - t1, counts))
                paths.append(path)
            t0 = time.perf_counter()
            rows = seqs.step(step) if step else []
            sync_device(self.device)
            st = self._states.get("block")
            return {"new": opened, "new_path": paths, "step": [tuple(x) for x in rows],
                    "step_s": time.perf_counter() - t0, "step_path": seqs.last_path if step else None,
                    "cache_bytes": st.store.summary()["bytes"] if st is not None else {},
                    "gone": st.store.take_gone() if st is not None else []}

    def cache_summary(self) -> dict | None:
        st = self._states.get("block")
        return st.store.summary() if st is not None else None

    def flush(self) -> None:
        """Everything this worker must not lose is on disk (the block cache's pending writes)."""
        for st in self._states.values():
            if hasattr(st, "flush"):
                st.flush()

    def close(self):
        if self.watch is not None:  # first: a rank still flushing its cache is not a stalled peer
            self.watch.stop()
        for st in self._states.values():
            if hasattr(st, "close"):
                st.close()
        self.group.destroy()

