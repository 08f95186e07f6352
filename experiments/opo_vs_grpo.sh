#!/usr/bin/env bash
# OPO vs GRPO exact on-policy vs GRPO off-policy (4 mini-batches per rollout batch, PPO clipping) on
# the embedded SmolLM2-135M-Instruct and the default task (reasoning-gym chain_sum), at equal sample
# budget (30 steps x 8 prompts x 8 samples, the same problem stream) and the same seeds.
# Two runs go at a time, one thread each. Writes runs/compare/, docs/opo_vs_grpo.html and the table.
#   SEEDS="0 1" experiments/opo_vs_grpo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"0 1"}
COMMON=(train.shift_every=1 train.eval_n=4 train.eval_k=1,2,4 train.eval_temperature=1.0 train.progress=false
        train.threads=1)
run() {  # name seed [config.yaml]
  local name=$1 seed=$2
  shift 2
  .venv/bin/opo train "$@" "${COMMON[@]}" train.seed="$seed" run_dir="runs/compare/$name-s$seed" \
    > "runs/compare/$name-s$seed.log" 2>&1
}
mkdir -p runs/compare
for seed in $SEEDS; do
  run opo "$seed" &
  run grpo "$seed" configs/grpo_on_policy.yaml &
  wait
  run grpo_off "$seed" configs/grpo_off_policy.yaml
done
.venv/bin/opo report runs/compare/*/ -o docs/opo_vs_grpo.html --svg-dir docs/plots
.venv/bin/python experiments/table.py runs/compare/*/
