#!/usr/bin/env bash
# Set-up, then the test suite (CPU, gloo, Ray actors on this machine). Extra flags go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
