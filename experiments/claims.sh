#!/usr/bin/env bash
# Issue 20: OPO's claims (arXiv 2505.23585) at this scale, with enough seeds for statistics.
# Four methods on the same seeds: OPO (the defaults), exact on-policy GRPO, off-policy GRPO
# (4 mini-batches, PPO clip) and RLOO. Two stages:
#   1  the default task and budget (embedded SmolLM2-135M-Instruct, chain_sum, 30 steps x 8 prompts
#      x 8 samples, 24 new tokens), seeds 0-4; held-out: greedy and pass@1/2/4 at temperature 1
#      (4 samples) on 100 problems, before training and every 10 steps.
#   2  long responses: the default task's sums answered after step-by-step reasoning (the MATH
#      prompt's instruction: ~90 tokens on average before training, some truncated), up to 160 new
#      tokens, 20 steps x 4 prompts x 8 samples, seeds 0-2; held-out every 10 steps on 50 problems.
# Every run resumes from its last checkpoint (every 5 steps) under runs/claims/ (stop it with Ctrl-C or by
# killing the script: each run checkpoints and exits). Once evaluated after training, a run's figures
# (metrics.jsonl, summary.json, config.yaml, and machine.txt: the CPU and its bf16) are copied into
# experiments/claims_runs/stage<N>/<method>-s<seed>/, which is committed, its checkpoints are deleted,
# and it is skipped from then on: the campaign spans sessions and machines, and runs/ may be lost
# between them. All runs compute in fp32 (run.precision=fp32), native bf16 or not, so seeds run on
# different machines stay comparable. One invocation per stage at a time:
#   experiments/claims.sh [1|2]                  # the runs not done yet, seed by seed (paired data first)
#   LANES=2 THREADS=1 experiments/claims.sh 1    # two runs side by side, one thread each
#   METHODS="opo grpo_off" experiments/claims.sh 2   # only these methods' runs (the rest on a later call)
#   experiments/claims.sh report                 # tables and statistics (experiments/claims_stats.py), plots
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:-1}
LANES=${LANES:-1}
THREADS=${THREADS:-2}
METHODS=(${METHODS:-opo grpo_off grpo rloo})  # the paper's comparison first; METHODS="opo grpo_off" runs a subset first

STORE=experiments/claims_runs
done_run() {  # trained and evaluated after training (a run stopped by a signal writes a summary without "after")
  [ -f "$1/summary.json" ] && grep -q '"after"' "$1/summary.json"
}
recorded() {  # in the committed store: a finished run's files, or the figures of one whose files were lost
  done_run "$1" || [ -f "$1/figures.json" ]
}

if [ "$STAGE" = report ]; then
  .venv/bin/python experiments/claims_stats.py $STORE --out docs/claims.json --markdown docs/claims.md
  # Plots: each line averages the same seeds, so a stage draws the seeds whose curves every method has;
  # where none has all of them, the first methods of METHODS that share seeds (the paper's pair first).
  for stage in 1 2; do
    for n in $(seq ${#METHODS[@]} -1 2); do
      dirs=(); seeds=()
      for seed in $(seq 0 9); do
        runs=()
        for name in "${METHODS[@]:0:n}"; do
          run=$STORE/stage$stage/$name-s$seed
          [ -f "$run/metrics.jsonl" ] && runs+=("$run")
        done
        [ ${#runs[@]} -eq "$n" ] && { dirs+=("${runs[@]}"); seeds+=("$seed"); }
      done
      [ ${#dirs[@]} -gt 0 ] && break
    done
    [ ${#dirs[@]} -gt 0 ] || continue
    echo "stage $stage plots: ${METHODS[*]:0:n}, seeds ${seeds[*]}"
    rm -rf docs/plots/claims$stage
    .venv/bin/opo report "${dirs[@]}" --mean-seeds --out docs/claims_stage$stage.html --svg-dir docs/plots/claims$stage
  done
  exit 0
fi

case $STAGE in
  1) SEEDS=${SEEDS:-0 1 2 3 4}
     COMMON=(train.eval_every=10 train.eval_n=4 train.eval_k=1,2,4 train.eval_temperature=1.0) ;;
  2) SEEDS=${SEEDS:-0 1 2}
     COMMON=(train.steps=20 rollout.prompts_per_step=4 rollout.max_new_tokens=160
             train.eval_max_new_tokens=160 task.eval_size=50 train.eval_every=10 train.eval_n=4
             train.eval_k=1,2,4 train.eval_temperature=1.0 task.extractor=last_number
             "task.prompt_template={question}
Please reason step by step, and put your final answer within \\boxed{}.") ;;
  *) echo "usage: experiments/claims.sh [1|2|report]" >&2; exit 2 ;;
esac
COMMON+=(run.precision=fp32 train.shift_every=5 checkpoint.every=5 checkpoint.resume=true run.threads=$THREADS run.progress=false)
ROOT=runs/claims/stage$STAGE
mkdir -p "$ROOT"
exec 9> "$ROOT/.lock"
flock -n 9 || { echo "claims.sh: stage $STAGE is already running (lock $ROOT/.lock)" >&2; exit 1; }
rm -rf "$ROOT/.claimed"; mkdir -p "$ROOT/.claimed"   # a lane claims a run by creating its directory here

lane() {
  for seed in $SEEDS; do
    for name in "${METHODS[@]}"; do
      run=$ROOT/$name-s$seed
      recorded "$STORE/stage$STAGE/$name-s$seed" && continue
      mkdir "$ROOT/.claimed/$name-s$seed" 2>/dev/null || continue
      case $name in
        opo) config=() ;;
        grpo) config=(configs/grpo_on_policy.yaml) ;;
        grpo_off) config=(configs/grpo_off_policy.yaml) ;;
        rloo) config=(algo.advantage=rloo) ;;
      esac
      # A lane stops at its first failure (a full disk, a broken setup) rather than fail every run after it.
      .venv/bin/opo train "${config[@]}" "${COMMON[@]}" run.seed="$seed" run.dir="$run" >> "$run.log" 2>&1 \
        || { echo "claims.sh: $run failed or was stopped (see $run.log)" >&2; return 1; }
      if done_run "$run"; then
        keep=$STORE/stage$STAGE/$name-s$seed
        mkdir -p "$keep"
        cp "$run/metrics.jsonl" "$run/summary.json" "$run/config.yaml" "$keep/"
        { echo "cpu:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
          echo "native bf16 (avx512_bf16 or amx_bf16): $(grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo && echo yes || echo no)"
          echo "cores: $(nproc); threads per run: $THREADS; runs side by side: $LANES; precision: fp32"
        } > "$keep/machine.txt"
        rm -rf "$run/checkpoints"  # 3 GB a run
      fi
    done
  done
}
trap 'trap - INT TERM; kill 0' INT TERM  # stop every lane's run too: each checkpoints and exits
pids=()
for _ in $(seq "$LANES"); do lane & pids+=($!); sleep 5; done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
exit $rc
