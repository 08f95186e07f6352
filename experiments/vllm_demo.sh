#!/usr/bin/env bash
# The vLLM rollout engine on this CPU (docs/vllm.md): the default run with rollout.engine=vllm, then short
# runs that measure the sampler/trainer log-prob gap when vLLM samples in bf16 while the trainer computes
# in fp32, with each rollout correction. Needs .venv-vllm (scripts/setup_vllm.sh).
#   experiments/vllm_demo.sh            # every stage not done yet
#   python experiments/vllm_table.py    # the tables of docs/vllm.md
set -euo pipefail
cd "$(dirname "$0")/.."
OPO=.venv-vllm/bin/opo
mkdir -p runs

# 1. the default run (8 prompts x 8 samples, 30 steps, held-out accuracy before and after), vLLM sampling
[ -f runs/demo-vllm/summary.json ] || $OPO train rollout.engine=vllm run.threads=2 run.progress=false \
  run.dir=runs/demo-vllm > runs/demo-vllm.log 2>&1

# 2. the gap with a bf16 sampler and an fp32 trainer: 3 steps each, no correction, tis, mis
for c in none tis mis; do
  [ -f runs/demo-vllm-bf16-$c/summary.json ] || $OPO train rollout.engine=vllm rollout.precision=bf16 \
    run.precision=fp32 algo.correction=$c train.steps=3 train.eval_before=false task.eval_size=20 \
    run.threads=2 run.progress=false run.dir=runs/demo-vllm-bf16-$c > runs/demo-vllm-bf16-$c.log 2>&1
done
