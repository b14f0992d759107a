"""jsonl input with line-exact errors, and output that is written and flushed per sample, with resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import ConfigError


def read_samples(path: str | os.PathLike, num_samples: int = -1) -> list[dict]:
    """Read `{"index"?, "input_context" or "blocks", "input_query", "output"/"outputs"?}` lines.

    A missing index becomes the 0-based line order. Errors name the file and line number.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--input_path {path} does not exist")
    samples, seen = [], set()
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                                  "each line must be one JSON object") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if "blocks" in obj:
                blocks = obj["blocks"]
                if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
                    raise ConfigError(f"{path}:{lineno}: field 'blocks' must be a list of strings")
                obj.setdefault("input_context", "".join(blocks))
            for key in ("input_context", "input_query"):
                if key not in obj:
                    raise ConfigError(f"{path}:{lineno}: missing field {key!r}; every line needs "
                                      "input_context (or blocks) and input_query")
                if not isinstance(obj[key], str):
                    raise ConfigError(f"{path}:{lineno}: field {key!r} must be a string")
            obj.setdefault("index", len(samples))
            if obj["index"] in seen:
                raise ConfigError(f"{path}:{lineno}: index {obj['index']!r} appears twice; indices must be unique")
            seen.add(obj["index"])
            obj["_line"] = lineno
            samples.append(obj)
            if 0 < num_samples <= len(samples):
                break
    if not samples:
        raise ConfigError(f"{path} holds no samples")
    return samples


def finished_indices(path: str | os.PathLike) -> set:
    """Indices already in an output file. A torn last line (a killed run) is cut off so appends stay valid."""
    p = Path(path)
    if not p.exists():
        return set()
    done, good_bytes = set(), 0
    with open(p, "rb") as f:
        for raw in f:
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                break
            if not raw.endswith(b"\n"):
                break
            done.add(obj["index"])
            good_bytes += len(raw)
    if good_bytes != p.stat().st_size:
        with open(p, "r+b") as f:
            f.truncate(good_bytes)
    return done


class ResultWriter:
    """Append one JSON line per finished sample, flushed and fsynced, so a killed run loses nothing."""

    def __init__(self, path: str | os.PathLike, resume: bool):
        p = Path(path)
        if p.parent:
            p.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(p, "a" if resume else "w", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()
