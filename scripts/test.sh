#!/usr/bin/env bash
# Set-up, then the test suite (CPU, gloo, Ray actors on this machine) shared out between two pytest workers
# (pytest-xdist, work stealing). Extra flags go to pytest (-n 0: one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n 2 --dist worksteal "$@"
