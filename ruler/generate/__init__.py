"""Per-task RULER sample builders and the length fitting they share."""

from __future__ import annotations

import random
from dataclasses import dataclass

from star_runtime.errors import ConfigError
from star_runtime.harness.fitting import fit_size

from ..tasks import TASK_CONFIGS, task_family


@dataclass
class Prompt:
    """Templates of one task with a model's head/tail: context = head + task context; query = task query +
    answer prefix + tail (RULER's split)."""

    head: str
    tail: str
    context: str
    query: str
    answer_prefix: str

    def context_text(self, **kw) -> str:
        return self.head + self.context.format(**kw)

    def query_text(self, **kw) -> str:
        return (self.query + self.answer_prefix).format(**kw) + self.tail


def make_prompt(task: str, head: str, tail: str) -> Prompt:
    fam = task_family(task)
    return Prompt(head, tail, fam["context"], fam["query"], fam["answer_prefix"])


def generate_task(task: str, length: int, num_samples: int, tokenizer, head: str, tail: str, data_dir,
                  seed: int = 42) -> list[dict]:
    """``num_samples`` samples of ``task`` fitted to ``length`` tokens (prompt + tokens to generate) in the
    given tokenizer; deterministic for the same arguments."""
    from . import cwe, fwe, niah, qa, vt

    family = TASK_CONFIGS[task]["family"]
    args = TASK_CONFIGS[task]["args"]
    prompt = make_prompt(task, head, tail)
    builder = {"niah": niah.Builder, "variable_tracking": vt.Builder, "common_words_extraction": cwe.Builder,
               "freq_words_extraction": fwe.Builder, "qa": qa.Builder}[family](prompt, args, data_dir, length)
    new_tokens = task_family(task)["tokens_to_generate"]
    budget = length - new_tokens

    def count(ctx, qry):
        return (len(tokenizer.encode(ctx, add_special_tokens=False))
                + len(tokenizer.encode(qry, add_special_tokens=False)))

    key = f"{task}:{length}:{seed}"
    builder.prepare(count, budget, key)
    size = fit_size(builder.build, count, budget, builder.min_size, builder.max_size, key)
    rng = random.Random(key)
    out = []
    for index in range(num_samples):
        if getattr(builder, "fit_each", False):  # sizes vary a lot between samples: fit each on its own
            state = rng.getstate()

            def build_at(n, _rng, index=index, state=state):
                r = random.Random()
                r.setstate(state)
                return builder.build(n, r, index=index) if builder.indexed else builder.build(n, r)

            size = fit_size(build_at, count, budget, builder.min_size, builder.max_size, f"{key}:{index}")
            rng.setstate(state)
        n = size
        while True:
            state = rng.getstate()
            ctx, qry, answers = builder.build(n, rng, index=index) if builder.indexed else builder.build(n, rng)
            tokens = count(ctx, qry)
            if tokens <= budget or n <= builder.min_size:
                break
            n = max(builder.min_size, n - max(1, n // 100))
            rng.setstate(state)
        if tokens > budget:
            raise ConfigError(f"{task} cannot be fitted to {length} tokens: its smallest sample needs "
                              f"{tokens + new_tokens}; ask for a longer length")
        out.append({"index": index, "input_context": ctx, "input_query": qry, "outputs": answers,
                    "length": tokens + new_tokens, "others": {"task": task, "size": n},
                    "tokens_to_generate": new_tokens})
    return out
