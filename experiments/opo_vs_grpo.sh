#!/usr/bin/env bash
# OPO vs GRPO exact on-policy vs GRPO off-policy (4 mini-batches per rollout batch, PPO clipping) on
# the embedded SmolLM2-135M-Instruct and the default task (reasoning-gym chain_sum), at equal sample
# budget and the same seeds: 20 steps x 4 prompts x 8 samples (the default group size, half the
# default prompts, two thirds of the default steps: what fits a session on a 2-core CPU), the same
# problem stream. Held-out evaluation (100 problems: greedy, and 4 samples at temperature 1 for
# pass@k) before training only in the OPO run (the initial model and seed are the same for all).
#   SEEDS="0 1" experiments/opo_vs_grpo.sh      # the runs (one thread each; start one per core)
#   experiments/opo_vs_grpo.sh report           # docs/opo_vs_grpo.html, docs/plots/*.svg, the table
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = report ]; then
  .venv/bin/opo report runs/compare/*/ -o docs/opo_vs_grpo.html --svg-dir docs/plots
  .venv/bin/python experiments/table.py runs/compare/*/
  exit 0
fi
COMMON=(train.steps=20 rollout.prompts_per_step=4 train.shift_every=2 train.eval_n=4 train.eval_k=1,2,4 train.eval_temperature=1.0 run.progress=false
        run.threads=1)
mkdir -p runs/compare
for seed in ${SEEDS:-0 1}; do
  for name in opo grpo grpo_off; do
    case $name in
      opo) config=() ;;
      grpo) config=(configs/grpo_on_policy.yaml train.eval_before=false) ;;
      grpo_off) config=(configs/grpo_off_policy.yaml train.eval_before=false) ;;
    esac
    .venv/bin/opo train "${config[@]}" "${COMMON[@]}" run.seed="$seed" run_dir="runs/compare/$name-s$seed" train.overwrite=true \
      > "runs/compare/$name-s$seed.log" 2>&1
  done
done
