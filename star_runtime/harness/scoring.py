"""String-match scoring shared by RULER, BABILong-style and RAG evaluations: predictions cleaned as RULER does,
then matched case-insensitively against reference answers, as percentages."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_pred(pred: str) -> str:
    """Strip, turn control characters into newlines, strip again (RULER's postprocess_pred)."""
    return _CONTROL.sub("\n", pred.strip()).strip()


def string_match_all(preds: list[str], refs: list[list[str]]) -> float:
    """Mean over samples of the fraction of references found in the prediction, x100."""
    score = sum(sum(r.lower() in p.lower() for r in ref) / len(ref) for p, ref in zip(preds, refs))
    return round(100 * score / len(preds), 2)


def string_match_part(preds: list[str], refs: list[list[str]]) -> float:
    """Mean over samples of whether any reference is found in the prediction, x100."""
    score = sum(max(r.lower() in p.lower() for r in ref) for p, ref in zip(preds, refs))
    return round(100 * score / len(preds), 2)


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}
