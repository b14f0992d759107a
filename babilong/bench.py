"""BABILong as a benchmark for ruler.runner.run_benchmark (same runner, tables and plots as RULER)."""

from __future__ import annotations

from pathlib import Path

from ruler.data import resolve_data_dir
from ruler.runner import cached_samples
from ruler.templates import split_template

from .generate import TOKENS_TO_GENERATE, generate_task
from .metrics import accuracy


class BabilongBenchmark:
    name = "babilong"

    def __init__(self, template: str, data_dir: str | None, pregen_dir: str | None = None, seed: int = 42):
        self.template = template
        # raw data is needed only to generate; a run from pre-generated samples may go without it
        self.data_dir = data_dir
        self.data = None if pregen_dir else resolve_data_dir(data_dir, need="babilong")
        self.pregen_dir = pregen_dir
        self.seed = seed
        self.head, self.tail, self.stop_words = split_template(template)

    def tokens_to_generate(self, task: str) -> int:
        return TOKENS_TO_GENERATE

    def score(self, task: str, records: list[dict]) -> dict:
        return accuracy(task, records)

    def generate(self, task: str, length: int, num_samples: int, tokenizer) -> list[dict]:
        if self.data is None:
            self.data = resolve_data_dir(self.data_dir, need="babilong")
        return generate_task(task, length, num_samples, tokenizer, self.head, self.tail, self.data, self.seed)

    def samples_file(self, task, length, num_samples, engine, out_dir: Path) -> Path:
        if self.pregen_dir:
            f = Path(self.pregen_dir) / str(length) / task / "validation.jsonl"
            if f.exists():
                return f
        return cached_samples(self, task, length, num_samples, engine, out_dir)
