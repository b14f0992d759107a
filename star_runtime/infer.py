"""`star-runtime infer` / run_star_attn_inference.py: a jsonl file of samples through one engine (the
Star-Attention reference's flags, generated from config.py, plus ours)."""

from __future__ import annotations

import argparse
import json
import time

from .config import add_flags, from_args
from .harness.predict import run_jsonl, summary_table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run dense / ring / star / block attention inference over a jsonl file.")
    add_flags(p)
    io = p.add_argument_group("input and output")
    io.add_argument("--input_path", required=True, help="jsonl: index?, input_context (or blocks), input_query, "
                                                        "output(s)?")
    io.add_argument("--output_path", required=True, help="jsonl predictions, one line per sample, written as each "
                                                         "finishes")
    io.add_argument("--num_samples", type=int, default=-1, help="first N samples only (-1: all)")
    io.add_argument("--use_cache", action="store_true", help="resume: keep finished samples, run the rest")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    cfg = from_args(a)
    t0 = time.time()
    records = run_jsonl(cfg, a.input_path, a.output_path, a.num_samples, a.use_cache)
    if records:
        print(summary_table(records))
        print(json.dumps({"output_path": a.output_path, "samples_run": len(records),
                          "wall_s": round(time.time() - t0, 2)}))
    return 0
