#!/usr/bin/env bash
# A reward reasoning model on this CPU (docs/judges.md): preference pairs from the embedded
# SmolLM2-135M-Instruct's own right and wrong answers to reasoning-gym chain_sum (the default task),
# the same model taught the verdict format (random verdicts), then trained as a judge with OPO
# (reward +1 / -1); held-out pairwise accuracy before and after; best-of-8 on held-out problems
# picked by the judge (knockout, ELO) against majority vote, a random pick and the oracle.
#   experiments/judge_demo.sh            # every stage not done yet, into runs/demo-judge/
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/demo-judge
mkdir -p $OUT
last_checkpoint() { ls -d "$1"/checkpoints/step_* | tail -1; }
SAMPLE=(task=reasoning_gym n=8 k=1,8 temperature=1.0 max_new_tokens=24 run.progress=false run.threads=2)

# 1. the policy's answers: 8 per problem on 150 training-side problems and on the 100 held-out ones
[ -f $OUT/pool/summary.json ] || .venv/bin/opo eval "${SAMPLE[@]}" task.eval_seed=101 task.eval_size=150 greedy=false \
  run.dir=$OUT/pool > $OUT/pool.log 2>&1
[ -f $OUT/heldout/summary.json ] || .venv/bin/opo eval "${SAMPLE[@]}" task.eval_size=100 run.dir=$OUT/heldout \
  > $OUT/heldout.log 2>&1

# 2. pairs: held-out ones from the held-out problems; training ones from the others
.venv/bin/opo pairs samples=$OUT/heldout/samples.jsonl out=$OUT/pairs_heldout.jsonl per_problem=2 overwrite=true
.venv/bin/opo pairs samples=$OUT/pool/samples.jsonl out=$OUT/pairs_train.jsonl per_problem=4 \
  exclude=$OUT/heldout/samples.jsonl overwrite=true
cat $OUT/pairs_heldout.jsonl $OUT/pairs_train.jsonl > $OUT/pairs_all.jsonl
H=$(wc -l < $OUT/pairs_heldout.jsonl)
PREF=(task=preference task.data_path=$OUT/pairs_all.jsonl task.eval_size=$H)

# 3. the verdict format, with random verdicts (1 epoch)
.venv/bin/python experiments/judge_format_rows.py $OUT/pairs_train.jsonl $OUT/format.jsonl
[ -f $OUT/format_sft/summary.json ] || .venv/bin/opo sft data=$OUT/format.jsonl sft.epochs=1 \
  sft.batch_tokens=4096 run.threads=2 run.progress=false run.dir=$OUT/format_sft > $OUT/format_sft.log 2>&1
FORMAT=$(last_checkpoint $OUT/format_sft)

# 4. OPO on the preference task, 8 prompts x 8 verdicts per step; held-out pairwise accuracy before, every 10
#    steps and after. judge_v1: each training example shows its pair in a random order; judge: a step shows
#    4 pairs, each in both orders (task.pair_orders=both, the default)
train_judge() {  # run name, then settings
  local name=$1; shift
  [ -f $OUT/$name/summary.json ] || .venv/bin/opo train model.path=$FORMAT "${PREF[@]}" "$@" rollout.max_new_tokens=16 \
    train.eval_max_new_tokens=16 train.steps=40 train.eval_every=10 checkpoint.every=10 run.threads=2 run.progress=false \
    run.dir=$OUT/$name > $OUT/$name.log 2>&1
}
# 5. held-out pairwise accuracy of sampled verdicts (8 per pair, temperature 1)
pairwise_sampled() {  # run name, model
  [ -f $OUT/pairwise_$1_sampled/summary.json ] || .venv/bin/opo eval model.path=$2 "${PREF[@]}" n=8 k=1,8 \
    temperature=1.0 greedy=false max_new_tokens=16 run.threads=2 run.progress=false \
    run.dir=$OUT/pairwise_$1_sampled > $OUT/pairwise_$1_sampled.log 2>&1
}
# 6. best-of-8 on the first 50 held-out problems (the same samples for each judge: same seed), greedy verdicts
best_of_8() {  # run name, judge model
  [ -f $OUT/bo8_$1/summary.json ] || .venv/bin/opo eval "${SAMPLE[@]}" task.eval_size=50 greedy=false \
    judge.backend=local judge.model=$2 judge.max_new_tokens=16 judge.temperature=0 \
    run.dir=$OUT/bo8_$1 > $OUT/bo8_$1.log 2>&1
}
train_judge judge_v1 task.pair_orders=random
best_of_8 format $FORMAT
best_of_8 judge_v1 "$(last_checkpoint $OUT/judge_v1)"
pairwise_sampled format $FORMAT
pairwise_sampled judge_v1 "$(last_checkpoint $OUT/judge_v1)"
[ -f $OUT/pairwise_embedded/summary.json ] || .venv/bin/opo eval "${PREF[@]}" n=0 max_new_tokens=64 run.threads=2 \
  run.progress=false run.dir=$OUT/pairwise_embedded > $OUT/pairwise_embedded.log 2>&1
train_judge judge
pairwise_sampled judge "$(last_checkpoint $OUT/judge)"
best_of_8 judge "$(last_checkpoint $OUT/judge)"
echo "done: $OUT/{pool,heldout,format_sft,judge_v1,judge,pairwise_*,bo8_*}/summary.json"
