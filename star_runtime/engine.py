"""Public entry: ``Engine(config).generate(context, query)``. Tokenizes and checks samples (each mode lays out
its own prompts, modes/), runs phase 1 and phase 2 on the workers, and turns the host's reply into a result
record."""

from __future__ import annotations

import math
import sys
import zlib

from .attention.rope import frame_crossing
from .config import ConfigError, RunConfig
from .models.loader import check_supported, load_tokenizer, model_config, model_window, resolve_model
from .modes import Prompt, get_mode
from .parallel.launchers import check_devices, make_launcher
from .parallel.worker import Options, Reply, Request
from .sampling import truncate_at_stop_words


def _notice(msg: str) -> None:
    print(f"[star-runtime] {msg}", file=sys.stderr, flush=True)


class Engine:
    def __init__(self, cfg: RunConfig, notice=_notice):
        self.cfg = cfg.validate()
        self.notice = notice
        if cfg.world_size < cfg.num_workers:
            notice(f"{cfg.attn_type} attention runs on one worker; the other {cfg.num_workers - 1} stay idle")
        self.source = resolve_model(cfg.model_path)
        config = model_config(self.source)
        check_supported(config)
        self.tokenizer = load_tokenizer(self.source)
        self.window = model_window(config)
        self.model_config = config
        check_devices(cfg)
        self.model_id = f"{self.source.name}|{self.source.path}|{cfg.dtype}|{cfg.device}"
        self.mode_states: dict = {}  # mode name -> that mode's engine-side state (block mode: placement)
        self.launcher = make_launcher(cfg, self.source)

    @property
    def is_writer(self) -> bool:
        """False on torchrun ranks other than the query host: they compute but do not write results."""
        return self.launcher.is_writer

    def share_from_host(self, obj):
        """``obj`` as the query host (the writing process) has it, on every process of the run."""
        return self.launcher.share_from_host(obj)

    def prepare(self, context: str, query: str, index=0, where: str | None = None,
                max_new_tokens: int | None = None, keep_logits: bool = False,
                blocks: list[str] | None = None, mode: str | None = None) -> Request:
        """Tokenize and check one sample; errors are one line naming the sample and the fix.

        blocks: the passages of a block-mode prompt (else ``context`` is cut at --block_delimiter); other
        modes read them joined as the context. mode: this sample's attention mode (default the run's).
        """
        where = where or f"sample {index}"
        n = max_new_tokens or self.cfg.tokens_to_generate
        m = get_mode(mode or self.cfg.attn_type)
        if m.name not in self.mode_states:
            self.mode_states[m.name] = m.engine_state(self.cfg, self.model_id, self.window, self.model_config)
        p = m.prompt(self.tokenizer, self.cfg, context, query, where, blocks, self.mode_states[m.name])
        return self._request(p.context_ids, p.query_ids, index, where, n, m.name, keep_logits, p.blocks)

    def prepare_ids(self, context_ids: list[int], query_ids: list[int], index=0, where: str | None = None,
                    max_new_tokens: int | None = None, mode: str | None = None) -> Request:
        """A sample given as token ids (a dense, ring or star mode's context and query), checked as prepare()
        checks text."""
        m = get_mode(mode or self.cfg.attn_type)
        if m.name == "block":
            raise ConfigError("block mode takes passages: give them as text (prepare(..., blocks=...))")
        if not query_ids or (not context_ids and m.name != "dense"):
            raise ConfigError(f"{where or f'sample {index}'}: the query needs a token, and a {m.name} context too")
        return self._request(list(context_ids), list(query_ids), index, where or f"sample {index}",
                             max_new_tokens or self.cfg.tokens_to_generate, m.name, False, None)

    def _request(self, context_ids, query_ids, index, where, n, mode, keep_logits, blocks) -> Request:
        p = Prompt(context_ids, query_ids, blocks)
        total = len(p.context_ids) + len(p.query_ids) + n
        if total > self.window:
            raise ConfigError(
                f"{where}: context ({len(p.context_ids)}) + query ({len(p.query_ids)}) + tokens_to_generate ({n}) "
                f"= {total} tokens exceeds the model window of {self.window}; shorten the context or lower "
                "--tokens_to_generate"
            )
        prompt = len(p.context_ids) + len(p.query_ids)
        switch = frame_crossing(self.model_config, prompt, total)
        if switch is not None:
            raise ConfigError(
                f"{where}: the prompt ({prompt} tokens) would grow past {switch} while generating, where this model's "
                f"LongRoPE switches to its long factors and every earlier key changes; lower --tokens_to_generate "
                f"to {switch - prompt} or fewer, or give a prompt longer than {switch} tokens"
            )
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return Request(index=index, context_ids=p.context_ids, query_ids=p.query_ids, max_new_tokens=n,
                       mode=mode, seed=zlib.crc32(str(index).encode()), keep_logits=keep_logits,
                       extra_eos=eos, blocks=p.blocks)

    def run(self, req: Request, options: Options | None = None) -> Reply:
        return self.run_batch([req], options)[0]

    def run_batch(self, reqs: list[Request], options: Options | None = None) -> list[Reply]:
        """Several samples at once: phase 1 per sample, phase-2 decode batched."""
        cfg = (options or Options()).layout(self.cfg)
        for req in reqs:
            msg = get_mode(req.mode or cfg.attn_type).notice(cfg, req, cfg.world_size)
            if msg:
                self.notice(msg)
        return self.launcher.run_batch(reqs, options)

    def serve_step(self, close: list[int], new: list[Request], step: list[int], warm: int = 0) -> dict:
        """One iteration of a server's continuous batching on every worker (parallel/worker.py serve_step);
        warm: before serving, the steps of batches up to that many sequences are captured."""
        for req in new:
            msg = get_mode(req.mode or self.cfg.attn_type).notice(self.cfg, req, self.cfg.world_size)
            if msg:
                self.notice(msg)
        res = self.launcher.serve_step(close, new, step, warm)
        placement = self.mode_states.get("block")
        if placement is not None and res.get("gone"):
            placement.forget(res["gone"])  # evicted blocks are placed afresh, by load, next time
        return res

    def record(self, req: Request, reply: Reply) -> dict:
        """The reference's prediction fields plus timings and the mode's own fields."""
        text = self.tokenizer.decode(reply.tokens, skip_special_tokens=True)
        n = len(reply.tokens)
        decode_steps = max(0, reply.steps - 1)
        rec = {
            "pred": truncate_at_stop_words(text, self.cfg.stop_words),
            "tokens_generated": n,
            "stopped_by": reply.stopped_by,
            "context_tokens": len(req.context_ids),
            "query_tokens": len(req.query_ids),
            "attn_type": req.mode or self.cfg.attn_type,
            "num_workers": self.cfg.world_size,
            "block_size": None,
            "phase1_s": round(reply.phase1_s, 6),
            "ttft_s": round(reply.ttft_s, 6),
            "decode_tokens_per_s": round(decode_steps / reply.decode_s, 3) if reply.decode_s > 0 else None,
            "decode_ms_per_token": round(1000 * reply.decode_s / decode_steps, 3) if decode_steps else None,
            "shard_tokens": reply.shard_tokens,
        }
        rec.update(get_mode(req.mode or self.cfg.attn_type).record(self.cfg, req, reply, self.cfg.world_size))
        return rec

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
