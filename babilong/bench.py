"""BABILong as a benchmark for ruler.runner.run_benchmark (star_runtime/harness: the runner, tables and plots RULER uses too)."""

from __future__ import annotations

from star_runtime.harness.runner import Benchmark

from .generate import TOKENS_TO_GENERATE, generate_task
from .metrics import accuracy


class BabilongBenchmark(Benchmark):
    name = "babilong"
    generate_task = staticmethod(generate_task)

    def tokens_to_generate(self, task: str) -> int:
        return TOKENS_TO_GENERATE

    def score(self, task: str, records: list[dict]) -> dict:
        return accuracy(task, records)
