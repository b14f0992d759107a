"""What an attention mode is: its phase 1 (how a context becomes each worker's KV shard) and the few
engine-side choices it makes (how a prompt is tokenized and laid out, its notices and record fields).
Phase 2 (the query and every generated token over all shards, merged exactly) is the same for every mode
and lives in decode.py.

A mode is a stateless object registered under its --attn_type name (modes/__init__.py). State a mode needs
lives with its owner: the engine's per-mode state (``engine_state``; block mode's placement map) and the
worker's (``worker.mode_state(name, factory)``; block mode's block store).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..fused import compiled_layers
from ..prompts import tokenize_prompt


@dataclass
class Prompt:
    """A tokenized sample: the context (phase 1), the query (phase 2) and, in block mode, its blocks."""

    context_ids: list[int]
    query_ids: list[int]
    blocks: list | None = None


class Mode:
    name = ""
    worker_state = None  # a class made once per worker, worker_state(worker) (block mode: the block store)

    # -- engine side -----------------------------------------------------------------------------------
    def engine_state(self, cfg, model_id: str, window: int, model_config):
        """Per-engine state of this mode (None: none); model_id names the weights, window and model_config are
        the model's."""
        return None

    def prompt(self, tokenizer, cfg, context: str, query: str, where: str, blocks=None, state=None) -> Prompt:
        """Tokenize one sample; errors are one line naming the sample (``where``) and the fix. ``blocks``, the
        passages of a block-mode prompt, are read joined as the context by the other modes."""
        if blocks is not None:
            context = "".join(blocks)
        if not context.strip():
            raise ConfigError(f"{where}: input_context is empty; give the text the query is about")
        if not query.strip():
            raise ConfigError(f"{where}: input_query is empty; give the question or instruction")
        return Prompt(*tokenize_prompt(tokenizer, context, query, cfg.chat_template))

    def notice(self, cfg, req, world: int) -> str | None:
        """One line about how a sample is laid out, when worth saying (the run goes on)."""
        return None

    def record(self, cfg, req, reply, world: int) -> dict:
        """This mode's fields of a result record."""
        return {}

    def settings(self, cfg) -> dict:
        """This mode's settings that change a run's answers (a result file records and compares them)."""
        return {}

    def run_tag(self, cfg) -> str:
        """What a benchmark's result folder adds to ``<model>_<mode>`` for this mode's settings."""
        return ""

    # -- worker side -----------------------------------------------------------------------------------
    def encode(self, worker, req, cfg):
        """Phase 1 of one sample on one worker -> its ContextShard. worker: model, group, device, pad_id,
        mode_state(), context_rows(req) (a buffer phase 2 will use, to write the KV into, or None); req: the
        Request; cfg: the run's settings with this call's overrides."""
        raise NotImplementedError

    def counters(self, worker) -> dict[str, int] | None:
        """Cumulative per-worker counters a reply reports per sample, summed over workers (block cache)."""
        return None


def run_decoder(model, ids: torch.Tensor, pos: torch.Tensor, prefill_layers: str = "auto") -> None:
    """Run the decoder stack only (no LM head): ids, pos (B, T). prefill_layers: --prefill_layers (auto compiles
    the decoder layers on CUDA, fused.compiled_layers)."""
    with compiled_layers(model, prefill_layers):
        model.get_decoder()(input_ids=ids, position_ids=pos, use_cache=False)
