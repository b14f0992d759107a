"""The raw inputs RULER builds from, read from the data folder (star_runtime/harness/data.py finds it):
the essay haystack, SQuAD and HotpotQA documents, English words and wonderwords' lists."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from star_runtime.harness.data import read_json, resolve_data_dir, sentence_splitter  # noqa: F401


@functools.lru_cache(maxsize=4)
def essay_words(data_dir: Path) -> tuple[str, ...]:
    """The essay haystack as RULER reads it: whitespace collapsed, split on spaces."""
    text = read_json(data_dir, "PaulGrahamEssays.json")["text"]
    return tuple(re.sub(r"\s+", " ", text).split(" "))


@functools.lru_cache(maxsize=4)
def squad(data_dir: Path) -> tuple[list[dict], list[str]]:
    """(questions, documents) from SQuAD v2 dev: answerable questions only (hidden answers skipped)."""
    data = read_json(data_dir, "squad.json")
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = []
    for d in data["data"]:
        article = [index[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            for q in p["qas"]:
                if q.get("is_impossible") or q.get("answers_hidden") or not q.get("answers"):
                    continue
                own = index[p["context"]]
                qas.append({"query": q["question"], "outputs": [a["text"] for a in q["answers"]],
                            "context": [own], "more_context": [i for i in article if i != own]})
    return qas, docs


@functools.lru_cache(maxsize=4)
def hotpotqa(data_dir: Path) -> tuple[list[dict], list[str]]:
    data = read_json(data_dir, "hotpotqa.json")
    docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = [{"query": d["question"], "outputs": [d["answer"]],
            "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]]} for d in data]
    return qas, docs


@functools.lru_cache(maxsize=2)
def english_words(data_dir: Path) -> tuple[str, ...]:
    words = read_json(data_dir, "english_words.json")
    # {"0": "a", ...} as kept here, or dwyl's own {"a": 1, ...}
    return tuple(words.values()) if all(isinstance(v, str) for v in list(words.values())[:10]) else tuple(words)


@functools.lru_cache(maxsize=1)
def wonderwords_lists() -> dict[str, list[str]]:
    """wonderwords' noun, adjective and verb lists, read from the word files it ships (as RULER reads them)."""
    from importlib.resources import files

    out = {}
    for name, fname in (("noun", "nounlist.txt"), ("adjective", "adjectivelist.txt"), ("verb", "verblist.txt")):
        text = (files("wonderwords") / "assets" / fname).read_text(encoding="utf-8")
        out[name] = [w.strip() for w in text.splitlines() if w.strip()]
    return out
