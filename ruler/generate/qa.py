"""Question answering: the answering documents among distractors (SQuAD for qa_1, HotpotQA for qa_2)."""

from __future__ import annotations

import random

from ..data import hotpotqa, squad

DOCUMENT = "Document {i}:\n{document}"


class Builder:
    fit_each = True  # documents differ per question
    indexed = True
    min_size = 1

    def __init__(self, prompt, args, data_dir, length):
        self.prompt = prompt
        self.qas, self.docs = (squad if args["dataset"] == "squad" else hotpotqa)(data_dir)
        self.max_size = len(self.docs)

    def prepare(self, count, budget, key):
        self.max_size = min(len(self.docs), max(1, budget // 40))  # a document is >= 40 tokens

    def build(self, n: int, rng: random.Random, index: int = 0):
        qa = self.qas[index % len(self.qas)]
        own, more = qa["context"], qa.get("more_context", [])
        if n < len(self.docs):
            if n - len(own) > len(more):
                others = [i for i in range(len(self.docs)) if i not in set(own) | set(more)]
                chosen = own + more + rng.sample(others, max(0, n - len(own) - len(more)))
            else:
                chosen = own + rng.sample(more, max(0, n - len(own)))
        else:
            chosen = list(range(len(self.docs)))
        docs = [self.docs[i] for i in chosen]
        rng.shuffle(docs)
        context = "\n\n".join(DOCUMENT.format(i=i + 1, document=d) for i, d in enumerate(docs))
        p = self.prompt
        return p.context_text(context=context), p.query_text(query=qa["query"]), list(qa["outputs"])
