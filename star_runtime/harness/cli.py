"""The benchmark command line shared by run_ruler.py and run_babilong.py: the reference's flags (-n, -p, -pc, -a,
-bs, -as, -l, -t, -d, -nn, -np, ...) with every run knob generated from config.py, plus the benchmark's own."""

from __future__ import annotations

import argparse
import os

from ..config import RunConfig, add_flags, from_args
from ..errors import ConfigError
from .templates import PROMPT_TEMPLATES

# run knobs a benchmark sets itself: tokens and stop words per task and template, the sample seed is its own
# --seed, the worker count is --num_nodes x --nproc_per_node
BENCH_SETS = ("tokens_to_generate", "stop_words", "chat_template", "seed", "num_workers")


def parse_length(text: str) -> int:
    """4096, 4k or 4K -> 4096; 0 / 0k allowed (BABILong's facts-only length)."""
    t = text.strip().lower()
    try:
        return int(t[:-1]) * 1024 if t.endswith("k") else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a length: {text!r} (use e.g. 4096 or 4k)") from None


def build_parser(description: str, tasks: list[str], default_tasks: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    b = p.add_argument_group("benchmark")
    b.add_argument("-n", "--model_name", default="smollm2-135m", help="experiment name prefix")
    b.add_argument("-pc", "--prompt_config", default="smollm", choices=sorted(PROMPT_TEMPLATES),
                   help="model prompt template")
    b.add_argument("-l", "--seq_lengths", type=parse_length, nargs="+", required=True,
                   help="sequence lengths in tokens (4096 or 4k)")
    b.add_argument("-t", "--tasks", nargs="+", default=default_tasks, choices=tasks)
    b.add_argument("-d", "--pregen_data_dir", default=None,
                   help="folder of pre-generated <length>/<task>/validation.jsonl")
    b.add_argument("--num_samples_per_task", type=int, default=50)
    b.add_argument("--prepare_only", action="store_true",
                   help="only generate the samples into -d/--pregen_data_dir (no model; run them later with -d)")
    b.add_argument("-o", "--output_dir", default="results")
    b.add_argument("--data_dir", default=None, help="raw benchmark data (default: $STAR_RUNTIME_DATA)")
    b.add_argument("--seed", type=int, default=42, help="sample generation seed")
    b.add_argument("-nn", "--num_nodes", type=int, default=1, help="nodes (Ray places workers over them)")
    b.add_argument("-np", "--nproc_per_node", type=int, default=1, help="workers per node")
    add_flags(p, exclude=BENCH_SETS)
    return p


def config_from(a, min_length: int = 256) -> RunConfig:
    if a.num_samples_per_task < 1:
        raise ConfigError(f"--num_samples_per_task must be >= 1 (got {a.num_samples_per_task})")
    for n in a.seq_lengths:
        if n < min_length:
            raise ConfigError(f"sequence length {n} is too short for these tasks; use {min_length} tokens or more")
    return from_args(a, num_workers=a.num_nodes * a.nproc_per_node, seed=0,
                     ray_address=a.ray_address or os.environ.get("RAY_ADDRESS")).validate()


def run_cli(argv, description: str, tasks: list[str], default_tasks: list[str], make_bench, min_length: int) -> int:
    """Parse the shared flags, build the benchmark, run every (length, task) through one engine."""
    from .runner import prepare_samples, run_benchmark

    a = build_parser(description, tasks, default_tasks).parse_args(argv)
    cfg = config_from(a, min_length=min_length)
    bench = make_bench(a.prompt_config, a.data_dir, a.pregen_data_dir, a.seed)
    if a.prepare_only:
        if not a.pregen_data_dir:
            raise ConfigError("--prepare_only writes samples into -d/--pregen_data_dir; give that folder")
        files = prepare_samples(bench, a.model_path, a.seq_lengths, a.tasks, a.num_samples_per_task,
                                a.pregen_data_dir)
        print(f"wrote {len(files)} sample files under {a.pregen_data_dir}", flush=True)
        return 0
    run_benchmark(cfg, a.model_name, bench, a.seq_lengths, a.tasks, a.num_samples_per_task, a.output_dir)
    return 0
