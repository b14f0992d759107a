"""Frequent words extraction: coded words drawn from a zeta distribution; the three most frequent (after the
'...' noise word) are the answer."""

from __future__ import annotations

import random
import string

import mpmath


class Builder:
    fit_each = True  # random coded words tokenize very differently
    indexed = False
    min_size = 10

    def __init__(self, prompt, args, data_dir, length):
        self.prompt = prompt
        self.alpha = args.get("alpha", 2.0)
        self.wordlen = args.get("coded_wordlen", 6)
        self.vocab_size = args.get("vocab_size", -1)
        if self.vocab_size <= 0:
            self.vocab_size = max(10, length // 50)
        self.zeta = float(mpmath.zeta(self.alpha))
        self.max_size = length * 2

    def prepare(self, count, budget, key):
        pass

    def build(self, n: int, rng: random.Random):
        vocab: list[str] = []
        while len(set(vocab)) < self.vocab_size:
            vocab.append("".join(rng.choices(string.ascii_lowercase, k=self.wordlen)))
        vocab = sorted(set(vocab))
        rng.shuffle(vocab)
        vocab[0] = "..."  # the top-ranked word is noise
        words = []
        for k, w in enumerate(vocab, 1):
            words += [w] * int(n * k ** -self.alpha / self.zeta)
        rng.shuffle(words)
        p = self.prompt
        return p.context_text(context=" ".join(words)), p.query_text(), vocab[1:4]
