"""A generated needle-in-a-haystack prompt (the passkey test), and the demo job around it."""

from __future__ import annotations

import argparse
import json
import random

from .config import RunConfig

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
QUERY = "What is the special magic number mentioned in the text above?"


def needle_prompt(tokenizer, context_tokens: int, depth: float = 0.5, seed: int = 0) -> tuple[str, str, str]:
    """(context, query, answer): filler text of about ``context_tokens`` tokens with one needle at ``depth``."""
    rng = random.Random(seed)
    answer = str(rng.randint(1_000_000, 9_999_999))
    needle = f"The special magic number is {answer}. Remember it. "
    per = len(tokenizer.encode(FILLER, add_special_tokens=False))
    n = max(1, (context_tokens - len(tokenizer.encode(needle, add_special_tokens=False))) // per)
    k = int(round(n * depth))
    context = ("There is important information hidden in the following text. Find and memorize it.\n"
               + FILLER * k + needle + FILLER * (n - k))
    return context, QUERY, answer


def main(argv=None) -> int:
    from .config import add_flags, from_args
    from .engine import Engine

    p = argparse.ArgumentParser(description="Needle-in-a-haystack demo on the bundled model.")
    add_flags(p, defaults={"num_workers": 2, "tokens_to_generate": 24, "chat_template": True})
    p.add_argument("--context_tokens", type=int, default=2000)
    p.add_argument("--depth", type=float, default=0.5, help="needle position, 0 (start) .. 1 (end)")
    p.add_argument("--no_chat_template", dest="chat_template", action="store_false")
    a = p.parse_args(argv)
    cfg: RunConfig = from_args(a)
    with Engine(cfg) as engine:
        context, query, answer = needle_prompt(engine.tokenizer, a.context_tokens, a.depth)
        rec = engine.generate(context, query)
    found = answer in rec["pred"]
    print(f"needle: {answer}   answer: {rec['pred']!r}   {'FOUND' if found else 'MISSED'}")
    print(f"{cfg.attn_type} attention, {cfg.world_size} worker(s), {rec['context_tokens']} context tokens "
          f"(per worker: {rec['shard_tokens']}), block {rec['block_size']}")
    print(f"phase 1 {rec['phase1_s']:.3f} s | TTFT {rec['ttft_s']:.3f} s | "
          f"decode {rec['decode_ms_per_token'] or float('nan'):.1f} ms/token")
    print(json.dumps({"needle": answer, "found": found, **rec}))
    return 0 if found else 1
