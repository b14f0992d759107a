"""The raw inputs RULER builds from, read from a data folder (never downloaded at run time).

The folder is ``--data_dir``, else ``$STAR_RUNTIME_DATA``; it holds ``ruler/`` (PaulGrahamEssays.json,
squad.json, hotpotqa.json, english_words.json) and ``nltk_data/`` (punkt_tab). ``python -m ruler.download``
fetches the official files for users with internet.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

from star_runtime.config import ConfigError


def resolve_data_dir(data_dir: str | None, need: str = "ruler") -> Path:
    """The data folder; ``need`` is the benchmark subfolder it must hold (ruler or babilong)."""
    d = data_dir or os.environ.get("STAR_RUNTIME_DATA")
    if not d:
        raise ConfigError(f"no data folder: pass --data_dir DIR or set STAR_RUNTIME_DATA (it holds {need}/ and "
                          "nltk_data/; python -m ruler.download --data_dir DIR fetches RULER's official files)")
    p = Path(d).expanduser()
    if not (p / need).is_dir():
        raise ConfigError(f"data folder {p} has no {need}/ subfolder; point --data_dir at the folder holding "
                          f"{need}/ and nltk_data/")
    return p


def data_file(data_dir: Path, name: str) -> Path:
    f = data_dir / "ruler" / name
    if not f.exists():
        raise ConfigError(f"{f} is missing; fetch it with: python -m ruler.download --data_dir {data_dir}")
    return f


def read_json(data_dir: Path, name: str):
    """A JSON data file, or one line naming the file when it is truncated or damaged."""
    f = data_file(data_dir, name)
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{f} is damaged or truncated ({str(e).splitlines()[0][:80]}); fetch it again with: "
                          f"python -m ruler.download --data_dir {data_dir}") from None


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


def sentence_splitter(data_dir: Path):
    """nltk's sent_tokenize on the punkt_tab parameters of the data folder (no download)."""
    import nltk

    nltk_dir = data_dir / "nltk_data"
    if not (nltk_dir / "tokenizers" / "punkt_tab").is_dir():
        raise ConfigError(f"{nltk_dir}/tokenizers/punkt_tab is missing; copy NLTK's punkt_tab there")
    if str(nltk_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_dir))
    from nltk.tokenize import sent_tokenize

    return sent_tokenize


@functools.lru_cache(maxsize=1)
def wonderwords_lists() -> dict[str, list[str]]:
    """wonderwords' noun, adjective and verb lists, read from the word files it ships (as RULER reads them)."""
    from importlib.resources import files

    out = {}
    for name, fname in (("noun", "nounlist.txt"), ("adjective", "adjectivelist.txt"), ("verb", "verblist.txt")):
        text = (files("wonderwords") / "assets" / fname).read_text(encoding="utf-8")
        out[name] = [w.strip() for w in text.splitlines() if w.strip()]
    return out
