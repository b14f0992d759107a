"""Table and plot across RULER runs: python ruler/gather_results_ruler.py -e results/"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from star_runtime.harness.tables import cli  # noqa: E402


def main(argv=None):
    cli(argv, "RULER average accuracy")


if __name__ == "__main__":
    main()
