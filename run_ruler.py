#!/usr/bin/env python
"""RULER on the runtime: generate samples offline, run them through dense/ring/star/block, score as RULER.

  python run_ruler.py -l 4096 8192 -a star -np 4 --device cuda --data_dir ../shared/data
"""

import sys

from ruler.cli import build_parser, config_from
from ruler.runner import RulerBenchmark, run_benchmark
from ruler.tasks import TASKS
from star_runtime.cli import run_main


def main(argv=None) -> int:
    a = build_parser("RULER (13 tasks) through star-runtime", TASKS, TASKS).parse_args(argv)
    cfg = config_from(a)
    bench = RulerBenchmark(a.prompt_config, a.data_dir, a.pregen_data_dir, a.seed)
    run_benchmark(cfg, a.model_name, bench, a.seq_lengths, a.tasks, a.num_samples_per_task, a.output_dir,
                  a.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
