#!/usr/bin/env bash
# Set-up, then star attention with 2 workers on the bundled SmolLM2 over a generated needle-in-a-haystack
# prompt; prints the answer and the timings. Extra flags go to `star-runtime demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/star-runtime demo --attn_type star --num_workers 2 "$@"
