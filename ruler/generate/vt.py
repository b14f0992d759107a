"""Variable tracking: chains of `VAR X = VAR Y` assignments hidden in repeated noise, with one worked example."""

from __future__ import annotations

import random
import string

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"


class Builder:
    indexed = False
    min_size = 1

    def __init__(self, prompt, args, data_dir, length):
        self.prompt = prompt
        self.chains, self.hops = args["num_chains"], args["num_hops"]
        self.max_size = 100_000
        self.example = ""

    def _chains(self, rng: random.Random, icl: bool):
        k = 3 if icl else 5
        hops = min(10, self.hops) if icl else self.hops
        names: list[str] = []
        while len(set(names)) < self.chains * (hops + 1):
            names.append("".join(rng.choices(string.ascii_uppercase, k=k)))
        names = list(dict.fromkeys(names))[: self.chains * (hops + 1)]
        groups = [names[i:i + hops + 1] for i in range(0, len(names), hops + 1)]
        chains = []
        for g in groups:
            chain = [f"VAR {g[0]} = {rng.randint(10000, 99998)}"]
            chain += [f"VAR {g[j + 1]} = VAR {g[j]} " for j in range(hops)]
            chains.append(chain)
        return groups, chains, hops

    def _task(self, n: int, rng: random.Random, icl: bool):
        """(task context, value, answer variables) without model template."""
        groups, chains, hops = self._chains(rng, icl)
        sentences = [NOISE] * n
        if len(sentences) <= len(chains[0]):  # too little noise: cut it into sentences
            sentences = [s + "." if s.strip() else s for noise in sentences for s in noise.split(".")]
        for chain in chains:
            positions = sorted(rng.sample(range(len(sentences)), min(len(chain), len(sentences))))
            for j, pos in enumerate(positions):
                sentences.insert(pos + j, chain[j])
        context = " ".join(sentences).replace(". \n", ".\n")
        value = chains[0][0].split("=")[-1].strip()
        return context, value, groups[0], hops

    def prepare(self, count, budget, key):
        self.max_size = max(10, budget // 10)  # a noise line is ~22 tokens
        self._make_example(count, key)

    def _make_example(self, count, key):
        """The worked example: the task at ~500 tokens, its answer filled in, variable names randomised."""
        rng = random.Random(key + ":example")
        p = self.prompt
        n = 1
        last = None
        while True:
            ctx, value, answer, hops = self._task(n + 5, rng, icl=True)
            text = (p.context.format(context=ctx) + (p.query + p.answer_prefix).format(query=value, num_v=hops + 1)
                    + " " + " ".join(answer))
            if count(text, "") > 500 or n > 200:
                break
            n += 5
            last = (text, answer)
        # the largest example within ~500 tokens; the smallest one when even that is longer (a wordy tokenizer)
        text, answer = last if last is not None else (text, answer)
        for var in answer:
            text = text.replace(var, "".join(rng.choices(string.ascii_uppercase, k=len(var))))
        self.example = text + "\n\n"

    def build(self, n: int, rng: random.Random):
        context, value, answer, hops = self._task(n, rng, icl=False)
        p = self.prompt
        ctx = p.head + " " + self.example + p.context.format(context=context)
        qry = (p.query + p.answer_prefix).format(query=value, num_v=hops + 1) + p.tail
        return ctx, qry, answer
