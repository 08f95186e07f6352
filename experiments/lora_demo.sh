#!/usr/bin/env bash
# LoRA against full fine-tuning on the default task (docs/lora.md): the default run (SmolLM2-135M,
# chain_sum, 30 steps x 8 prompts x 8 samples, held-out greedy accuracy before and after) with full
# fine-tuning at its default rate, and with rank-16 adapters at the same rate and at 10x it.
#   experiments/lora_demo.sh              # every run not done yet (resumable: a killed one continues)
#   python experiments/lora_table.py      # the table of docs/lora.md
set -euo pipefail
cd "$(dirname "$0")/.."
OPO=.venv/bin/opo
mkdir -p runs

run() {  # name, settings... (checkpoint.resume=true: a fresh run starts at step 0, a killed one continues)
  local name=$1; shift
  [ -f runs/$name/summary.json ] && return
  $OPO train "$@" run.threads=2 run.progress=false checkpoint.every=5 run.dir=runs/$name checkpoint.resume=true \
    >> runs/$name.log 2>&1
}

run lora-r16-lr1e-4 model.lora.rank=16 optim.lr=1e-4   # ~10x full fine-tuning's rate (docs/lora.md)
run full-lr1e-5                                         # the default: full fine-tuning at 1e-5
run lora-r16-lr1e-5 model.lora.rank=16 optim.lr=1e-5   # LoRA at full fine-tuning's rate
