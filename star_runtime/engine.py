"""Public entry: ``Engine(config).generate(context, query)``. Tokenizes, validates, runs phase 1 and
phase 2 on the workers, and turns the host's reply into a result record."""

from __future__ import annotations

import math
import sys
import zlib

from collections import OrderedDict

from .block_mode import BlockSpec
from .config import ConfigError, RunConfig
from .kv.block_store import block_key
from .models.loader import check_supported, load_tokenizer, model_config, model_window, resolve_model
from .parallel.launchers import check_devices, make_launcher
from .parallel.worker import Reply, Request
from .phase1 import config_plan
from .prompts import split_blocks, tokenize_blocks, tokenize_prompt
from .sampling import truncate_at_stop_words


def _notice(msg: str) -> None:
    print(f"[star-runtime] {msg}", file=sys.stderr, flush=True)


class Engine:
    def __init__(self, cfg: RunConfig, notice=_notice):
        self.cfg = cfg.validate()
        self.notice = notice
        if cfg.attn_type == "dense" and cfg.num_workers > 1:
            notice(f"dense attention runs on one worker; the other {cfg.num_workers - 1} stay idle")
        self.source = resolve_model(cfg.model_path)
        config = model_config(self.source)
        check_supported(config)
        self.tokenizer = load_tokenizer(self.source)
        self.window = model_window(config)
        check_devices(cfg)
        self.launcher = make_launcher(cfg, self.source)
        self.model_id = f"{self.source.name}|{self.source.path}|{cfg.dtype}|{cfg.device}"
        self.block_home: OrderedDict[str, int] = OrderedDict()  # block key -> worker that encoded it

    @property
    def is_writer(self) -> bool:
        """False on torchrun ranks other than the query host: they compute but do not write results."""
        return self.launcher.is_writer

    def prepare(self, context: str, query: str, index=0, where: str | None = None,
                max_new_tokens: int | None = None, keep_logits: bool = False,
                blocks: list[str] | None = None) -> Request:
        """Tokenize and check one sample; errors are one line naming the sample and the fix.

        blocks: the passages of a block-mode prompt (else ``context`` is cut at --block_delimiter); other
        modes read them joined as the context.
        """
        where = where or f"sample {index}"
        n = max_new_tokens or self.cfg.tokens_to_generate
        if self.cfg.attn_type == "block":
            return self._prepare_blocks(context, query, index, where, n, keep_logits, blocks)
        if blocks is not None:
            context = "".join(blocks)
        if not context.strip():
            raise ConfigError(f"{where}: input_context is empty; give the text the query is about")
        if not query.strip():
            raise ConfigError(f"{where}: input_query is empty; give the question or instruction")
        ctx, qry = tokenize_prompt(self.tokenizer, context, query, self.cfg.chat_template)
        self._check_window(where, len(ctx), len(qry), n)
        return self._request(index, ctx, qry, n, keep_logits)

    def _check_window(self, where: str, n_ctx: int, n_query: int, n_new: int) -> None:
        total = n_ctx + n_query + n_new
        if total > self.window:
            raise ConfigError(
                f"{where}: context ({n_ctx}) + query ({n_query}) + tokens_to_generate ({n_new}) = {total} tokens "
                f"exceeds the model window of {self.window}; shorten the context or lower --tokens_to_generate"
            )

    def _request(self, index, ctx, qry, n, keep_logits, blocks=None) -> Request:
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return Request(index, ctx, qry, n, seed=zlib.crc32(str(index).encode()), keep_logits=keep_logits,
                       extra_eos=eos, blocks=blocks)

    def _prepare_blocks(self, context, query, index, where, n, keep_logits, blocks) -> Request:
        """Block mode: tokenize every block on its own, fold blocks past --num_local_attention_blocks into
        the final block, give each local block its offset, content key and worker."""
        texts = list(blocks) if blocks is not None else split_blocks(context, self.cfg.block_delimiter)
        if not texts:
            raise ConfigError(f"{where}: no blocks (the block list / input_context is empty); give at least one "
                              "passage")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ConfigError(f"{where}: block {i} is empty; drop it or give it text")
        if not query.strip():
            raise ConfigError(f"{where}: input_query is empty; give the question or instruction")
        ids, query_ids = tokenize_blocks(self.tokenizer, texts, query, self.cfg.chat_template)
        for i, b in enumerate(ids):
            if len(b) > self.window:
                raise ConfigError(f"{where}: block {i} has {len(b)} tokens, beyond the model window of "
                                  f"{self.window}; split it into smaller passages")
        k = len(ids) if self.cfg.num_local_attention_blocks < 0 else self.cfg.num_local_attention_blocks
        local, folded = ids[:k], ids[k:]
        qry = [t for b in folded for t in b] + query_ids
        ctx = [t for b in local for t in b]
        self._check_window(where, len(ctx), len(qry), n)
        return self._request(index, ctx, qry, n, keep_logits, self._place_blocks(local))

    def _place_blocks(self, local: list[list[int]]) -> list[BlockSpec]:
        """Cache-aware placement: a block some worker already encoded goes back to it; a new block goes to the
        worker with the fewest tokens of this prompt so far."""
        w = self.cfg.world_size
        load = [0] * w
        specs, offset = [], 0
        for ids in local:
            key = block_key(self.model_id, ids)
            rank = self.block_home.get(key)
            if rank is None:
                rank = min(range(w), key=lambda r: (load[r], r))
                self.block_home[key] = rank
            else:
                self.block_home.move_to_end(key)
            load[rank] += len(ids)
            specs.append(BlockSpec(key, tuple(ids), offset, rank))
            offset += len(ids)
        while len(self.block_home) > 1_000_000:
            self.block_home.popitem(last=False)
        return specs

    def share_from_host(self, obj):
        """``obj`` as the query host (the writing process) has it, on every process of the run."""
        return self.launcher.share_from_host(obj)

    def layout_notice(self, req: Request) -> str | None:
        """One line when a short sample leaves workers without context (the run goes on)."""
        w = self.cfg.world_size
        if self.cfg.attn_type == "star" and w > 1:
            plan = config_plan(self.cfg, len(req.context_ids))
            if plan.num_blocks < w:
                return (f"sample {req.index}: {len(req.context_ids)} context tokens make {plan.num_blocks} "
                        f"block(s) of {plan.block_size} for {w} workers; {w - plan.num_blocks} worker(s) hold "
                        "no context for it")
        return None

    def run(self, req: Request) -> Reply:
        return self.run_batch([req])[0]

    def run_batch(self, reqs: list[Request]) -> list[Reply]:
        """Several samples at once: phase 1 per sample, phase-2 decode batched."""
        for req in reqs:
            msg = self.layout_notice(req)
            if msg:
                self.notice(msg)
        return self.launcher.run_batch(reqs)

    def record(self, req: Request, reply: Reply) -> dict:
        """The reference's prediction fields plus timings."""
        text = self.tokenizer.decode(reply.tokens, skip_special_tokens=True)
        pred = truncate_at_stop_words(text, self.cfg.stop_words)
        n = len(reply.tokens)
        decode_steps = max(0, reply.steps - 1)
        block = None
        if self.cfg.attn_type == "star":
            block = config_plan(self.cfg, len(req.context_ids)).block_size
        return {
            "pred": pred,
            "tokens_generated": n,
            "stopped_by": reply.stopped_by,
            "context_tokens": len(req.context_ids),
            "query_tokens": len(req.query_ids),
            "attn_type": self.cfg.attn_type,
            "num_workers": self.cfg.world_size,
            "block_size": block,
            "phase1_s": round(reply.phase1_s, 6),
            "ttft_s": round(reply.phase1_s + reply.first_token_s, 6),
            "decode_tokens_per_s": round(decode_steps / reply.decode_s, 3) if reply.decode_s > 0 else None,
            "decode_ms_per_token": round(1000 * reply.decode_s / decode_steps, 3) if decode_steps else None,
            "shard_tokens": reply.shard_tokens,
            **({"blocks": len(req.blocks), "block_cache": reply.cache} if req.blocks is not None else {}),
        }

    def generate(self, context: str, query: str, index=0, blocks: list[str] | None = None) -> dict:
        req = self.prepare(context, query, index, blocks=blocks)
        return self.record(req, self.run(req))

    def close(self) -> None:
        self.launcher.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else math.nan
