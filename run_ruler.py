#!/usr/bin/env python
"""RULER on the runtime: generate samples offline, run them through dense/ring/star/block, score as RULER.

  python run_ruler.py -l 4096 8192 -a star -np 4 --device cuda --data_dir ../shared/data
"""

import sys

from ruler.bench import RulerBenchmark
from ruler.tasks import TASKS
from star_runtime.cli import run_main
from star_runtime.harness.cli import run_cli


def main(argv=None) -> int:
    return run_cli(argv, "RULER (13 tasks) through star-runtime", TASKS, TASKS, RulerBenchmark, min_length=256)


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
