"""Multi-passage RAG samples, offline, from the data folder's SQuAD and HotpotQA files.

A sample is the passage(s) holding the answer among distractor passages (shuffled), then the question; the
answer is the response. Emitted twice: a block version (one block per passage) and a plain version (the
passages joined as one context). Train and evaluation never share a question: SQuAD splits by article
(answered articles only), HotpotQA by question. Seeded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..harness.data import data_file, resolve_data_dir

QUERY = "Answer the question from the documents above in a few words.\nQuestion: {question}\nAnswer:"


def _passage(title: str, text: str) -> str:
    return f"Document ({title}):\n{text.strip()}\n\n"


def squad_samples(data_dir: Path, rng: random.Random, eval_articles: int, distractors: int):
    """(train, eval) SQuAD samples; evaluation articles are held out whole."""
    raw = json.loads(data_file(data_dir, "squad.json").read_text())
    answered = [d for d in raw["data"] if any(not q.get("is_impossible") and q.get("answers")
                                              for p in d["paragraphs"] for q in p["qas"])]
    pool = [(d["title"], p["context"]) for d in raw["data"] for p in d["paragraphs"]]
    titles = sorted(d["title"] for d in answered)
    rng.shuffle(titles)
    held_out = set(titles[:eval_articles])
    train, evaluation = [], []
    for d in answered:
        for p in d["paragraphs"]:
            for q in p["qas"]:
                if q.get("is_impossible") or not q.get("answers"):
                    continue
                others = [x for x in rng.sample(pool, distractors + 1) if x[1] != p["context"]][:distractors]
                passages = [(d["title"], p["context"], True)] + [(t, c, False) for t, c in others]
                rng.shuffle(passages)
                sample = {"source": "squad", "article": d["title"], "question": q["question"].strip(),
                          "outputs": sorted({a["text"] for a in q["answers"]}),
                          "blocks": [_passage(t, c) for t, c, _ in passages],
                          "answer_blocks": [i for i, (_, _, hit) in enumerate(passages) if hit]}
                (evaluation if d["title"] in held_out else train).append(sample)
    return train, evaluation


def hotpot_samples(data_dir: Path, rng: random.Random, eval_fraction: float):
    raw = json.loads(data_file(data_dir, "hotpotqa.json").read_text())
    order = list(range(len(raw)))
    rng.shuffle(order)
    held_out = set(order[: int(len(raw) * eval_fraction)])
    train, evaluation = [], []
    for i, d in enumerate(raw):
        support = {t for t, _ in d.get("supporting_facts", [])}
        if not support:  # records without supporting facts: the passages that contain the answer
            support = {t for t, s in d["context"] if d["answer"].lower() in "".join(s).lower()}
        passages = [(t, "".join(s), t in support) for t, s in d["context"]]
        rng.shuffle(passages)
        sample = {"source": "hotpotqa", "article": f"hotpot-{i}", "question": d["question"].strip(),
                  "outputs": [d["answer"]], "blocks": [_passage(t, c) for t, c, _ in passages],
                  "answer_blocks": [j for j, (_, _, hit) in enumerate(passages) if hit]}
        (evaluation if i in held_out else train).append(sample)
    return train, evaluation


def build(data_dir: str | None, seed: int = 0, eval_articles: int = 4, distractors: int = 4,
          hotpot_eval_fraction: float = 0.25) -> dict[str, list[dict]]:
    """{"train": [...], "eval": [...]} with index, blocks, input_query, outputs and provenance."""
    data = resolve_data_dir(data_dir)
    rng = random.Random(seed)
    s_train, s_eval = squad_samples(data, rng, eval_articles, distractors)
    h_train, h_eval = hotpot_samples(data, rng, hotpot_eval_fraction)
    out = {}
    for split, rows in (("train", s_train + h_train), ("eval", s_eval + h_eval)):
        rng.shuffle(rows)
        for i, r in enumerate(rows):
            r["index"] = i
            r["input_query"] = QUERY.format(question=r["question"])
        out[split] = rows
    return out


def write(splits: dict[str, list[dict]], out_dir: str) -> dict[str, str]:
    """<split>.blocks.jsonl (blocks per passage) and <split>.plain.jsonl (one context) per split."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in splits.items():
        for kind in ("blocks", "plain"):
            f = out / f"{split}.{kind}.jsonl"
            with open(f, "w") as fh:
                for r in rows:
                    rec = dict(r)
                    if kind == "plain":
                        rec["input_context"] = "".join(rec.pop("blocks"))
                    fh.write(json.dumps(rec) + "\n")
            files[f"{split}.{kind}"] = str(f)
    return files
