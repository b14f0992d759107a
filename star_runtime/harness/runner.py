"""Run a benchmark's tasks through one Engine: samples (generated once per folder, or pre-generated),
predictions with resume (predict.run_jsonl), scores and summaries. RULER and BABILong-style build on it.

Layout of an output folder (as the reference): <output_dir>/<model_name>_<attn>[_b<block>a<anchor>]/<length>/
  data/<task>/validation.jsonl   the samples
  <task>.jsonl                   predictions, one line per sample, written as each finishes
  summary.json, summary.csv      scores per task and the average
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from tqdm import tqdm

from ..config import RunConfig
from ..engine import Engine
from ..models.loader import load_tokenizer, resolve_model
from ..modes import get_mode
from .data import resolve_data_dir
from .predict import result_rows, run_jsonl
from .templates import split_template


def run_name(model_name: str, cfg: RunConfig) -> str:
    """The reference's folder name: <model>_<mode> plus the mode's layout (star: _b<block>a<anchor>, _<N>blocks,
    _bauto_w<workers>), plus the dtype when it is not the device's default.

    Every other setting that changes answers (model path, template, sampling) is in each predictions file's
    meta: a run with other ones is refused in one line instead of mixing its answers in."""
    name = f"{model_name}_{cfg.attn_type}" + get_mode(cfg.attn_type).run_tag(cfg)
    if cfg.dtype != "auto":
        name += f"_{cfg.dtype}"
    return name


class Benchmark:
    """What run_benchmark drives: a benchmark's samples (generated once per folder, or pre-generated), its
    tokens to generate and its scoring. RULER and BABILong give name, generate_task(task, length, n,
    tokenizer, head, tail, data_dir, seed), tokens_to_generate(task) and score(task, records).

    The raw data folder is resolved when samples are generated: a run from pre-generated samples may go
    without it, any other run checks it at once.
    """

    name = ""  # also the data folder's subfolder the generator reads

    def __init__(self, template: str, data_dir: str | None, pregen_dir: str | None = None, seed: int = 42):
        self.template = template
        self.data_dir = data_dir
        self.pregen_dir = pregen_dir
        self.seed = seed
        self.head, self.tail, self.stop_words = split_template(template)
        self._data = None if pregen_dir else resolve_data_dir(data_dir, need=self.name)

    def generate(self, task: str, length: int, num_samples: int, tokenizer) -> list[dict]:
        if self._data is None:
            self._data = resolve_data_dir(self.data_dir, need=self.name)
        return self.generate_task(task, length, num_samples, tokenizer, self.head, self.tail, self._data,
                                  self.seed)

    def samples_file(self, task: str, length: int, num_samples: int, engine: Engine, out_dir: Path) -> Path:
        """Pre-generated samples if -d holds them, else samples generated once next to the predictions."""
        if self.pregen_dir:
            f = pregen_file(self.pregen_dir, length, task)
            if f.exists():
                return f
        return write_samples(self, task, length, num_samples, engine.tokenizer, engine.source,
                             out_dir / "data" / task / "validation.jsonl")


def write_samples(bench, task: str, length: int, num_samples: int, tokenizer, source, f: Path) -> Path:
    """Generate into f (with a .meta.json of the settings) unless f already holds these settings' samples.

    source: the evaluated model's ModelSource (its tokenizer identifies the samples)."""
    meta = {"benchmark": bench.name, "task": task, "length": length, "num_samples": num_samples,
            "template": bench.template, "seed": bench.seed, "tokenizer": source.tokenizer_path or source.name}
    meta_file = f.with_suffix(".meta.json")
    if f.exists() and meta_file.exists() and json.loads(meta_file.read_text()) == meta:
        return f
    samples = bench.generate(task, length, num_samples, tokenizer)
    f.parent.mkdir(parents=True, exist_ok=True)
    # written aside and renamed: torchrun ranks sharing the folder each write the same samples atomically
    tmp = f.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        for s in samples:
            fh.write(json.dumps(s) + "\n")
    os.replace(tmp, f)
    tmp = meta_file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, meta_file)
    return f


def pregen_file(root: str, length: int, task: str) -> Path:
    """Where -d/--pregen_data_dir keeps a (length, task)'s samples."""
    return Path(root) / str(length) / task / "validation.jsonl"


def prepare_samples(bench, model_path: str | None, lengths: list[int], tasks: list[str], num_samples: int,
                    out_root: str) -> list[Path]:
    """Samples only, no model: <out_root>/<length>/<task>/validation.jsonl, the layout -d/--pregen_data_dir reads.

    For generating on a CPU machine what GPU workers will run (only the tokenizer is loaded).
    """
    source = resolve_model(model_path)
    tokenizer = load_tokenizer(source)
    files = []
    for length in lengths:
        for task in tqdm(tasks, desc=f"{bench.name} samples, {length} tokens", unit="task"):
            f = pregen_file(out_root, length, task)
            files.append(write_samples(bench, task, length, num_samples, tokenizer, source, f))
    return files


def write_summary(out_dir: Path, tasks: list[str], scores: dict) -> dict:
    valid = [scores[t]["score"] for t in tasks if scores.get(t, {}).get("score") is not None]
    summary = {"tasks": {t: scores[t] for t in tasks if t in scores},
               "average": round(sum(valid) / len(valid), 2) if valid else None}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(out_dir / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Tasks"] + list(summary["tasks"]) + ["Average"])
        w.writerow(["Score"] + [v["score"] for v in summary["tasks"].values()] + [summary["average"]])
        w.writerow(["Nulls"] + [v["nulls"] for v in summary["tasks"].values()] + [""])
    return summary


def run_benchmark(cfg: RunConfig, model_name: str, bench, lengths: list[int], tasks: list[str],
                  num_samples: int, output_dir: str) -> dict:
    """Every (length, task): samples, predictions (resumed), scores; one engine, loaded once.

    Returns {length: summary} (on the process that writes results).
    """
    cfg = cfg.replace(stop_words=list(cfg.stop_words) or bench.stop_words)
    root = Path(output_dir) / run_name(model_name, cfg)
    results = {}
    with Engine(cfg) as engine:
        for length in lengths:
            out_dir = root / str(length)
            scores = {}
            for task in tqdm(tasks, desc=f"{bench.name} {length} tokens", unit="task",
                             disable=not engine.is_writer):
                samples = bench.samples_file(task, length, num_samples, engine, out_dir)
                preds = out_dir / f"{task}.jsonl"
                new = bench.tokens_to_generate(task)
                run_jsonl(cfg, str(samples), str(preds), num_samples, use_cache=True, engine=engine,
                          max_new_tokens=new)
                if engine.is_writer:
                    scores[task] = bench.score(task, result_rows(cfg, str(samples), str(preds), num_samples, new))
            if engine.is_writer:
                results[length] = write_summary(out_dir, tasks, scores)
                print(format_summary(run_name(model_name, cfg), length, results[length]), flush=True)
    return results


def format_summary(name: str, length: int, summary: dict) -> str:
    rows = [f"{name} @ {length} tokens"]
    for t, v in summary["tasks"].items():
        rows.append(f"  {t:<18} {v['score']:>7}  (nulls {v['nulls']})")
    rows.append(f"  {'average':<18} {summary['average']:>7}")
    return "\n".join(rows)
