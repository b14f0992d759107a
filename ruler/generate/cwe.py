"""Common words extraction: a numbered word list where ten words repeat most; one worked example first."""

from __future__ import annotations

import random

from ..data import english_words, wonderwords_lists


class Builder:
    indexed = False
    min_size = 11

    def __init__(self, prompt, args, data_dir, length):
        self.prompt = prompt
        self.a = args
        w = wonderwords_lists()
        self.words = sorted(set(w["noun"] + w["adjective"] + w["verb"]))
        random.Random(42).shuffle(self.words)
        self.data_dir = data_dir
        self.short = length < 4096
        self.max_size = len(self.words)

    def prepare(self, count, budget, key):
        # long contexts need more distinct words than wonderwords has: RULER then uses english_words
        if count(" ".join(f"{i}. {w}" for i, w in enumerate(self.words[:200])), "") * len(self.words) / 200 \
                * self.a["freq_ucw"] < budget:
            self.words = sorted(set(self.words) | set(english_words(self.data_dir)))
            random.Random(42).shuffle(self.words)
            self.max_size = len(self.words)

    def _list(self, rng, n, common_repeats, uncommon_repeats):
        chosen = rng.sample(self.words, n)
        common, uncommon = chosen[: self.a["num_cw"]], chosen[self.a["num_cw"]:]
        items = common * common_repeats + uncommon * uncommon_repeats
        rng.shuffle(items)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items)), common

    def build(self, n: int, rng: random.Random):
        p = self.prompt
        if self.short:
            ex_ctx, ex_ans = self._list(rng, 20, 3, 1)
            ctx, answer = self._list(rng, n, 6, 1)
        else:
            ex_ctx, ex_ans = self._list(rng, 40, 10, 3)
            ctx, answer = self._list(rng, n, self.a["freq_cw"], self.a["freq_ucw"])
        query = (p.query + p.answer_prefix) + p.tail
        example = p.context_text(context=ex_ctx) + query + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ex_ans))
        return example + "\n" + p.context_text(context=ctx), query, answer
