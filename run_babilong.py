#!/usr/bin/env python
"""BABILong on the runtime: bAbI facts hidden in Gutenberg books, BABILong prompts and answer check.

  python run_babilong.py -l 0 2k 4k 8k -a star -np 4 --device cuda --data_dir ../shared/data
"""

import sys

from babilong.bench import BabilongBenchmark
from babilong.tasks import DEFAULT_TASKS, TASKS
from ruler.cli import build_parser, config_from
from ruler.runner import run_benchmark
from star_runtime.cli import run_main


def main(argv=None) -> int:
    a = build_parser("BABILong (qa1-qa20; qa1-qa5 by default) through star-runtime", TASKS,
                     DEFAULT_TASKS).parse_args(argv)
    cfg = config_from(a, min_length=0)
    bench = BabilongBenchmark(a.prompt_config, a.data_dir, a.pregen_data_dir, a.seed)
    run_benchmark(cfg, a.model_name, bench, a.seq_lengths, a.tasks, a.num_samples_per_task, a.output_dir,
                  a.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
