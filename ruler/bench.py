"""RULER as a benchmark for star_runtime.harness.runner.run_benchmark: its 13 task generators, tokens to
generate per task family and RULER's scoring."""

from __future__ import annotations

from star_runtime.harness.runner import Benchmark

from .generate import generate_task
from .scoring import score_task
from .tasks import task_family


class RulerBenchmark(Benchmark):
    name = "ruler"
    generate_task = staticmethod(generate_task)

    def tokens_to_generate(self, task: str) -> int:
        return task_family(task)["tokens_to_generate"]

    def score(self, task: str, records: list[dict]) -> dict:
        return score_task(task, records)
