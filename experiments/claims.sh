#!/usr/bin/env bash
# Issue 20 (in progress): OPO's claims at the default budget with enough seeds. Stage 1: the default
# task (embedded SmolLM2-135M-Instruct, chain_sum, 30 steps x 8 prompts x 8 samples), four methods on
# the same seeds: OPO (default), exact on-policy GRPO, off-policy GRPO (4 mini-batches, PPO clip) and
# RLOO; held-out curves: greedy accuracy and pass@1/2/4 (4 samples at temperature 1) every 5 steps.
# One run at a time (2 threads); every run resumes, so the campaign spans sessions:
#   SEEDS="0 1 2 3 4" experiments/claims.sh      # the runs not done yet, seed by seed (paired data first)
set -euo pipefail
cd "$(dirname "$0")/.."
COMMON=(train.eval_every=5 train.eval_n=4 train.eval_k=1,2,4 train.eval_temperature=1.0 train.shift_every=5
        checkpoint.every=5 checkpoint.resume=true run.threads=2 run.progress=false)
mkdir -p runs/claims
for seed in ${SEEDS:-0 1 2 3 4}; do
  for name in opo grpo grpo_off rloo; do
    case $name in
      opo) config=() ;;
      grpo) config=(configs/grpo_on_policy.yaml) ;;
      grpo_off) config=(configs/grpo_off_policy.yaml) ;;
      rloo) config=(algo.advantage=rloo) ;;
    esac
    run=runs/claims/$name-s$seed
    [ -f "$run/summary.json" ] && continue
    .venv/bin/opo train "${config[@]}" "${COMMON[@]}" run.seed="$seed" run.dir="$run" >> "$run.log" 2>&1
  done
done
