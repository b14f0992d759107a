"""Needle-in-a-haystack: key-value needles hidden in essays, a repeated sentence, or other needles."""

from __future__ import annotations

import random
import uuid

from ..data import essay_words, sentence_splitter, wonderwords_lists

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
REPEAT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = [round(i * 100 / 39) for i in range(40)]  # 40 depths, 0..100 %, as RULER


def _single(template: str) -> str:
    """RULER's rewording when one value is asked for (applied to the task text only)."""
    return template.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


class Builder:
    indexed = False
    min_size = 1

    def __init__(self, prompt, args, data_dir, length):
        self.prompt = prompt
        self.a = dict(args)
        self.a["num_needle_k"] = max(self.a["num_needle_k"], self.a["num_needle_q"])
        self.kind = self.a["type_haystack"]
        if self.kind == "essay":
            self.essay = essay_words(data_dir)
            self.split = sentence_splitter(data_dir)
            self.max_size = len(self.essay)
        else:
            self.max_size = 200_000
        words = wonderwords_lists()
        self.adjs, self.nouns = words["adjective"], words["noun"]
        self.single = self.a["num_needle_q"] * self.a["num_needle_v"] == 1

    def prepare(self, count, budget, key):
        # bound the search: a sentence is >= 8 tokens, an essay word >= 2/3 of a token
        self.max_size = max(2, budget // 8) if self.kind != "essay" else min(len(self.essay), budget * 3 // 2 + 100)

    def _random(self, kind: str, rng: random.Random) -> str:
        if kind == "numbers":
            return str(rng.randint(10**6, 10**7 - 1))
        if kind == "words":
            return f"{rng.choice(self.adjs)}-{rng.choice(self.nouns)}"
        if kind == "uuids":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        raise ValueError(kind)

    def build(self, n: int, rng: random.Random):
        a = self.a
        type_v = a["type_needle_v"]
        keys, values, needles = [], [], []
        for _ in range(a["num_needle_k"]):
            keys.append(self._random(a["type_needle_k"], rng))
            vals = [self._random(type_v, rng) for _ in range(a["num_needle_v"])]
            values.append(vals)
            needles += [NEEDLE.format(type_needle_v=type_v, key=keys[-1], value=v) for v in vals]
        rng.shuffle(needles)
        if self.kind == "essay":
            sents = self.split(" ".join(self.essay[:n]).strip())
            cuts = sorted(int(len(sents) * d / 100) for d in rng.sample(DEPTHS, len(needles)))
            pieces, last = [], 0
            for cut, needle in zip(cuts, needles):
                pieces += [" ".join(sents[last:cut]), needle]
                last = cut
            pieces.append(" ".join(sents[last:]))
            context = " ".join(p for p in pieces if p)
        else:
            if self.kind == "repeat":
                sentences = [REPEAT] * n
            else:
                sentences = [NEEDLE.format(type_needle_v=type_v, key=self._random(a["type_needle_k"], rng),
                                           value=self._random(type_v, rng)) for _ in range(n)]
            for idx, needle in zip(sorted(rng.sample(range(n), len(needles)), reverse=True), needles):
                sentences.insert(idx, needle)
            context = "\n".join(sentences)
        asked = rng.sample(range(a["num_needle_k"]), a["num_needle_q"])
        queries = [keys[i] for i in asked]
        answers = [v for i in asked for v in values[i]]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        p = self.prompt
        ctx_t, qry_t, pre_t = p.context, p.query, p.answer_prefix
        if self.single:
            ctx_t, qry_t, pre_t, type_v = _single(ctx_t), _single(qry_t), _single(pre_t), type_v[:-1]
        ctx = p.head + ctx_t.format(type_needle_v=type_v, context=context)
        qry = (qry_t + pre_t).format(type_needle_v=type_v, query=query) + p.tail
        return ctx, qry, answers
