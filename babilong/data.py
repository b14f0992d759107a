"""bAbI stories and the background books BABILong hides them in (a data folder, nothing downloaded)."""

from __future__ import annotations

import functools
import random
from pathlib import Path

from star_runtime.errors import ConfigError

from .tasks import TASK_FILES


def babilong_dir(data_dir: Path) -> Path:
    d = data_dir / "babilong"
    if not (d / "bAbI").is_dir() or not (d / "background").is_dir():
        raise ConfigError(f"{d} must hold bAbI/ and background/; point --data_dir at the folder holding babilong/")
    return d


@functools.lru_cache(maxsize=32)
def babi_samples(data_dir: Path, task: str, split: str = "test") -> list[dict]:
    """Every question of a bAbI file with the story facts before it: {facts, question, answer}."""
    f = babilong_dir(data_dir) / "bAbI" / "en-10k" / f"{TASK_FILES[task]}_{split}.txt"
    if not f.exists():
        raise ConfigError(f"{f} is missing")
    samples, story = [], []
    for line in f.read_text().splitlines():
        num, text = line.split(" ", 1)
        if num == "1":
            story = []
        if "\t" in text:
            question, answer, _ = text.split("\t")
            samples.append({"facts": list(story), "question": question.strip(), "answer": answer.strip()})
        else:
            story.append(text.strip())
    return samples


@functools.lru_cache(maxsize=4)
def books(data_dir: Path) -> tuple[str, ...]:
    files = sorted((babilong_dir(data_dir) / "background").glob("*.txt"))
    if not files:
        raise ConfigError(f"no background books (*.txt) in {babilong_dir(data_dir) / 'background'}")
    return tuple(f.read_text(encoding="utf-8", errors="replace") for f in files)


def background_sentences(data_dir: Path, rng: random.Random, approx_chars: int, split) -> list[str]:
    """Consecutive sentences from a random place of a random book, about ``approx_chars`` long in all
    (continuing into the next book when one ends)."""
    texts = books(data_dir)
    b = rng.randrange(len(texts))
    start = rng.randrange(max(1, len(texts[b]) - approx_chars))
    out, have = [], 0
    while have < approx_chars:
        window = texts[b][start:start + approx_chars + 2000]
        sents = [" ".join(s.split()) for s in split(window)]
        sents = [s for s in sents[1:-1] if s]  # the first and last may be cut mid-sentence
        out += sents
        have += sum(len(s) + 1 for s in sents)
        b, start = (b + 1) % len(texts), 0
    return out
