"""Table and plot across BABILong runs: python babilong/gather_results_babilong.py -e results_babilong/"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ruler.results_table import write_outputs  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-e", "--exp_dir", required=True, help="folder holding <run>/<length>/summary.json")
    a = p.parse_args(argv)
    for f in write_outputs(a.exp_dir, "BABILong accuracy (Gutenberg background)"):
        print(f)
    print(open(os.path.join(a.exp_dir, "results_table.md")).read())


if __name__ == "__main__":
    main()
