#!/usr/bin/env python
"""Drop-in for the Star-Attention reference's run_star_attn_inference.py (same flags, plus
--num_workers/-np, --device, --dtype). See README.md."""

import sys

from star_runtime.cli import run_main
from star_runtime.infer import main

if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
