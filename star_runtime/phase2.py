"""Phase 2: the query and every generated token attend to all workers' KV exactly (star and ring alike).

All workers run the same forward for the new tokens (SPMD); attention/phase2.py merges the partial
attentions. The query host samples the next token and broadcasts it with a stop flag, so every worker
takes the same path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .attention.hooks import attention_state
from .attention.phase2 import GlobalAttention
from .kv.shard import ContextShard, QueryCache


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    first_token_s: float = 0.0  # query prefill until the first token is known
    decode_s: float = 0.0  # every later token
    stopped_by: str = "length"  # eos | stop_word | length
    logits: list = field(default_factory=list)
    steps: int = 0  # forwards run: 1 query prefill + (steps - 1) decode steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _num_layers(model) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return cfg.num_hidden_layers


@torch.inference_mode()
def generate(model, group, shard: ContextShard, query: torch.Tensor, start_pos: int, max_new_tokens: int,
             sampler=None, stop_checker=None, eos: set[int] = frozenset(), keep_logits: bool = False
             ) -> Generation:
    """Query prefill then decode. query: (Tq,) long on the model device; start_pos = context length.

    Returns the generated ids (without the EOS token) on every worker; with keep_logits, the host also
    keeps every step's logits (V,) in fp32 on the CPU (for exactness tests).
    """
    dev = query.device
    cache = QueryCache(_num_layers(model), query.numel() + max_new_tokens) if group.is_host else None
    state = GlobalAttention(group, shard, cache)
    ids = query.unsqueeze(0)
    pos = torch.arange(start_pos, start_pos + query.numel(), device=dev).unsqueeze(0)
    gen = Generation()
    msg = torch.zeros(2, dtype=torch.long, device=dev)
    t0 = time.perf_counter()
    for step in range(max_new_tokens):
        with attention_state(state):
            logits = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=1).logits[0, -1]
        gen.steps = step + 1
        if cache is not None:
            if keep_logits:
                gen.logits.append(logits.float().cpu())
            cache.commit(ids.shape[1])
            tok = sampler(logits) if sampler is not None else int(torch.argmax(logits))
            stop = 0
            if tok in eos:
                stop = 1
            elif stop_checker is not None and stop_checker(gen.tokens + [tok]):
                stop = 2
            msg[0], msg[1] = tok, stop
        group.broadcast(msg, group.host)
        tok, stop = int(msg[0]), int(msg[1])
        if step == 0:
            _sync(dev)
            gen.first_token_s = time.perf_counter() - t0
            t0 = time.perf_counter()
        if stop != 1:
            gen.tokens.append(tok)
        if stop:
            gen.stopped_by = "eos" if stop == 1 else "stop_word"
            break
        ids = msg[:1].view(1, 1).clone()
        pos = pos[:, -1:] + 1
    _sync(dev)
    gen.decode_s = time.perf_counter() - t0 if gen.steps > 1 else 0.0
    return gen
