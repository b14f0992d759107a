"""BABILong's answer check: labels of the task found in the first sentence of the output, minus labels that
also appear in the question; right when exactly the target's labels remain."""

from __future__ import annotations

from .tasks import LABELS


def preprocess_output(output: str) -> str:
    output = output.lower().split(".")[0]  # the first sentence only
    for cut in ("<context>", "<example>", "question"):  # the model starting to write examples or questions
        output = output.split(cut)[0]
    return output


def compare_answers(target: str, output: str, question: str, labels: list[str]) -> bool:
    output = preprocess_output(output)
    target = target.lower()
    labels = {label.lower() for label in labels}
    in_question = {label for label in labels if label in question.lower()}
    found = {label for label in labels if label in output} - in_question
    if "," in target and len(target) > 3:  # several targets (qa8)
        parts = target.split(",")
        return all(p in found for p in parts) and len(found) == len(parts)
    return target in found and len(found) == 1


def accuracy(task: str, records: list[dict]) -> dict:
    """{"score" (% right), "nulls", "samples"} for prediction records of one task."""
    if not records:
        return {"score": None, "nulls": "0/0", "samples": 0}
    right = sum(compare_answers(r["outputs"][0], r["pred"], r["others"]["question"], LABELS[task]) for r in records)
    nulls = sum(not r["pred"].strip() for r in records)
    return {"score": round(100 * right / len(records), 2), "nulls": f"{nulls}/{len(records)}",
            "samples": len(records)}
