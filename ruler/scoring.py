"""RULER's scoring: predictions cleaned as RULER does, then string_match_all (niah, vt, cwe, fwe) or
string_match_part (qa), case-insensitive, as percentages."""

from __future__ import annotations

import re

from .tasks import task_family

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


def score_task(task: str, records: list[dict]) -> dict:
    """{"score", "nulls", "samples"} for prediction records of one task."""
    if not records:
        return {"score": None, "nulls": "0/0", "samples": 0}
    preds = [postprocess_pred(r["pred"]) for r in records]
    refs = [r["outputs"] for r in records]
    metric = METRICS[task_family(task)["metric"]]
    return {"score": metric(preds, refs), "nulls": f"{sum(not p for p in preds)}/{len(preds)}",
            "samples": len(preds)}
