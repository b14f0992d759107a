#!/usr/bin/env python
"""BABILong on the runtime: bAbI facts hidden in Gutenberg books, BABILong prompts and answer check.

  python run_babilong.py -l 0 2k 4k 8k -a star -np 4 --device cuda --data_dir ../shared/data
"""

import sys

from babilong.bench import BabilongBenchmark
from babilong.tasks import DEFAULT_TASKS, TASKS
from star_runtime.cli import run_main
from star_runtime.harness.cli import run_cli


def main(argv=None) -> int:
    return run_cli(argv, "BABILong (qa1-qa20; qa1-qa5 by default) through star-runtime", TASKS, DEFAULT_TASKS,
                   BabilongBenchmark, min_length=0)


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
