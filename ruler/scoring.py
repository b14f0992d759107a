"""RULER's scoring: string_match_all (niah, vt, cwe, fwe) or string_match_part (qa) over cleaned predictions
(the shared metrics live in star_runtime/harness/scoring.py)."""

from __future__ import annotations

from star_runtime.harness.scoring import METRICS, postprocess_pred

from .tasks import task_family


def score_task(task: str, records: list[dict]) -> dict:
    """{"score", "nulls", "samples"} for prediction records of one task."""
    if not records:
        return {"score": None, "nulls": "0/0", "samples": 0}
    preds = [postprocess_pred(r["pred"]) for r in records]
    refs = [r["outputs"] for r in records]
    metric = METRICS[task_family(task)["metric"]]
    return {"score": metric(preds, refs), "nulls": f"{sum(not p for p in preds)}/{len(preds)}",
            "samples": len(preds)}
