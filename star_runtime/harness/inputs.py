"""jsonl input with line-exact errors: every problem is one line naming the file, the line and the fix."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import ConfigError


def read_samples(path: str | os.PathLike, num_samples: int = -1) -> list[dict]:
    """Read `{"index"?, "input_context" or "blocks", "input_query", "output"/"outputs"?}` lines.

    A missing index becomes the 0-based line order; an index is an integer or a string. Blank lines are
    skipped. Errors name the file and line number. ``num_samples``: the first N samples (-1: all).
    """
    if num_samples == 0 or num_samples < -1:
        raise ConfigError(f"--num_samples must be -1 (all samples) or >= 1 (got {num_samples})")
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--input_path {path} does not exist")
    if p.is_dir():
        raise ConfigError(f"--input_path {path} is a directory; give the jsonl file inside it")
    samples, seen = [], set()
    try:
        f = open(p, "rb")
    except OSError as e:
        raise ConfigError(f"--input_path {path} cannot be read ({e.strerror}); check its permissions") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                                  f"{e.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            obj = _parse_line(path, lineno, line)
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


def _parse_line(path, lineno: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                          "each line must be one JSON object") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{path}:{lineno}: holds a lone surrogate escape (such as \\ud800), which is not "
                          "Unicode text; fix or drop that character") from None
    if "index" in obj and (isinstance(obj["index"], bool) or not isinstance(obj["index"], (int, str))):
        raise ConfigError(f"{path}:{lineno}: field 'index' must be an integer or a string "
                          f"(got {type(obj['index']).__name__}); leave it out to number lines in order")
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
    return obj


def sample_digest(sample: dict) -> str:
    """What a sample asks (its context, blocks and query): a short hash that a result row records, so a row
    made from other text is never taken for this sample's answer."""
    text = json.dumps([sample.get("blocks"), sample["input_context"], sample["input_query"]], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
