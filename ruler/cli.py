"""Command line shared by run_ruler.py and run_babilong.py (the reference's flags, plus ours)."""

from __future__ import annotations

import argparse
import os

from star_runtime.config import ConfigError, RunConfig

from .templates import PROMPT_TEMPLATES


def parse_length(text: str) -> int:
    """4096, 4k or 4K -> 4096; 0 / 0k allowed (BABILong's facts-only length)."""
    t = text.strip().lower()
    try:
        return int(t[:-1]) * 1024 if t.endswith("k") else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a length: {text!r} (use e.g. 4096 or 4k)") from None


def build_parser(description: str, tasks: list[str], default_tasks: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("-n", "--model_name", default="smollm2-135m", help="experiment name prefix")
    p.add_argument("-p", "--model_path", default=None,
                   help="HF folder, .gguf, random:<name>; default: the bundled SmolLM2-135M-Instruct")
    p.add_argument("-pc", "--prompt_config", default="smollm", choices=sorted(PROMPT_TEMPLATES),
                   help="model prompt template")
    p.add_argument("-a", "--attn_type", default="star", choices=["dense", "ring", "star", "block"])
    p.add_argument("-bs", "--block_size", type=int, default=-1, help="star block size (-1: context / workers)")
    p.add_argument("-as", "--anchor_block_size", type=int, default=-1, help="star anchor size (-1: block size)")
    p.add_argument("-nb", "--num_blocks", type=int, default=0,
                   help="star: cut each sample into N blocks, block = length / N at every length (instead of -bs)")
    p.add_argument("-l", "--seq_lengths", type=parse_length, nargs="+", required=True,
                   help="sequence lengths in tokens (4096 or 4k)")
    p.add_argument("-t", "--tasks", nargs="+", default=default_tasks, choices=tasks)
    p.add_argument("-d", "--pregen_data_dir", default=None, help="folder of pre-generated <length>/<task>/validation.jsonl")
    p.add_argument("--num_samples_per_task", type=int, default=50)
    p.add_argument("--prepare_only", action="store_true",
                   help="only generate the samples into -d/--pregen_data_dir (no model; run them later with -d)")
    p.add_argument("-nn", "--num_nodes", type=int, default=1, help="nodes (Ray places workers over them)")
    p.add_argument("-np", "--nproc_per_node", type=int, default=1, help="workers per node")
    p.add_argument("--gpus_per_worker", type=int, default=1,
                   help="GPUs per worker: > 1 splits the model's layers over them (a model too big for one GPU)")
    p.add_argument("-o", "--output_dir", default="results")
    p.add_argument("--data_dir", default=None, help="raw benchmark data (default: $STAR_RUNTIME_DATA)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--batch_size", type=int, default=1, help="samples decoded together")
    p.add_argument("--prefill_layers", default="auto", choices=["auto", "compiled", "eager"],
                   help="phase 1's decoder layers: auto = torch.compile'd on GPUs, eager on CPU")
    p.add_argument("--seed", type=int, default=42, help="sample generation seed")
    p.add_argument("--launcher", default="ray", choices=["ray", "torchrun"])
    p.add_argument("--ray_address", default=None)
    return p


def config_from(a, min_length: int = 256) -> RunConfig:
    if a.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1 (got {a.batch_size})")
    if a.num_samples_per_task < 1:
        raise ConfigError(f"--num_samples_per_task must be >= 1 (got {a.num_samples_per_task})")
    for n in a.seq_lengths:
        if n < min_length:
            raise ConfigError(f"sequence length {n} is too short for these tasks; use {min_length} tokens or more")
    return RunConfig(model_path=a.model_path, attn_type=a.attn_type, block_size=a.block_size,
                     anchor_block_size=a.anchor_block_size, num_blocks=a.num_blocks,
                     num_workers=a.num_nodes * a.nproc_per_node, gpus_per_worker=a.gpus_per_worker,
                     device=a.device, dtype=a.dtype, launcher=a.launcher, prefill_layers=a.prefill_layers,
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
    run_benchmark(cfg, a.model_name, bench, a.seq_lengths, a.tasks, a.num_samples_per_task, a.output_dir,
                  a.batch_size)
    return 0
