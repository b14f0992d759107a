"""BABILong samples: a bAbI story's facts scattered, in order, through background sentences until the prompt
reaches the requested length in the model's tokens (0 = the facts alone), then BABILong's prompt."""

from __future__ import annotations

import random

from star_runtime.errors import ConfigError
from star_runtime.harness.data import sentence_splitter
from star_runtime.harness.fitting import fit_size

from .data import babi_samples, background_sentences
from .tasks import prompt_for

TOKENS_TO_GENERATE = 20
CONTEXT = "{instruction}\n\n{examples}\n\n{post_prompt}\n\n<context>\n{context}\n</context>"
QUERY = "Question: {question}"


def format_prompt(head: str, tail: str, task: str, context: str, question: str) -> tuple[str, str]:
    """(input_context, input_query) as BABILong formats them, inside a model template's head and tail."""
    p = prompt_for(task)
    ctx = (head + CONTEXT.format(context=context.strip(), **p)).strip() + "\n\n"
    return ctx, QUERY.format(question=question) + tail


def interleave(facts: list[str], background: list[str], k: int, fractions: list[float]) -> str:
    """Facts inserted in order among the first k background sentences, at the sorted ``fractions``."""
    bg = background[:k]
    cuts = sorted(int(f * (len(bg) + 1)) for f in fractions)
    out, last = [], 0
    for cut, fact in zip(cuts, facts):
        cut = min(cut, len(bg))
        out += bg[last:cut] + [fact]
        last = cut
    out += bg[last:]
    return " ".join(out)


def generate_task(task: str, length: int, num_samples: int, tokenizer, head: str, tail: str, data_dir,
                  seed: int = 42) -> list[dict]:
    stories = babi_samples(data_dir, task)
    split = sentence_splitter(data_dir)
    rng = random.Random(f"babilong:{task}:{length}:{seed}")

    def count(ctx, qry):
        return (len(tokenizer.encode(ctx, add_special_tokens=False))
                + len(tokenizer.encode(qry, add_special_tokens=False)))

    out = []
    for index in range(num_samples):
        s = stories[index % len(stories)]
        fractions = [rng.random() for _ in s["facts"]]
        background = background_sentences(data_dir, rng, length * 6, split) if length > 0 else []

        def build(k, _rng=None):
            ctx, qry = format_prompt(head, tail, task, interleave(s["facts"], background, k, fractions),
                                     s["question"])
            return ctx, qry, [s["answer"]]

        k = fit_size(build, count, length - TOKENS_TO_GENERATE, 0, len(background), "") if length > 0 else 0
        ctx, qry, answers = build(k)
        n = count(ctx, qry) + TOKENS_TO_GENERATE
        if length > 0 and n > length:
            raise ConfigError(f"{task} at length {length}: the prompt with its facts alone needs {n} tokens "
                              f"(the {TOKENS_TO_GENERATE} to generate included); ask for a longer length, or "
                              "length 0 for the facts without background")
        out.append({"index": index, "input_context": ctx, "input_query": qry, "outputs": answers, "length": n,
                    "others": {"task": task, "question": s["question"], "facts": s["facts"],
                               "background_sentences": k},
                    "tokens_to_generate": TOKENS_TO_GENERATE})
    return out
