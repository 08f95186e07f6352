#!/usr/bin/env bash
# Hybrid thinking on this CPU (docs/hybrid.md): data from the embedded SmolLM2-135M-Instruct by
# rejection sampling, HFT (opo sft), then HGPO (opo train hybrid.enabled=true algo.advantage=hgpo),
# with Hybrid Accuracy before and after HGPO on 60 held-out problems. The task mixes easy and harder
# items: reasoning-gym chain_sum with 2 to 4 one-digit terms (the difficulty is num_terms); the user
# prompt is the bare question, so the model must choose whether to think.
#   experiments/hybrid_demo.sh            # every stage not done yet, into runs/demo-hybrid/
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/demo-hybrid
TASK=(task.prompt_template='{question}' 'task.generator_args={min_terms: 2, max_terms: 4, min_digits: 1, max_digits: 1}'
      task.eval_size=60)
TAGS='sft.add_tokens=<think>,</think>,<no_think>,</no_think>'
mkdir -p $OUT
last_checkpoint() { ls -d "$1"/checkpoints/step_* | tail -1; }

# 1. data: 240 training problems x 4 samples per mode, up to 2 distinct correct rows per problem and mode
[ -f $OUT/data/summary.json ] || .venv/bin/opo hybrid-data "${TASK[@]}" problems=240 samples=4 per_mode=2 \
  think_max_new_tokens=128 batch_size=64 direct_prompt='{question} Answer with just the number.' \
  run.progress=false run.dir=$OUT/data > $OUT/data.log 2>&1

# 2. HFT: the paper's recipe (3 epochs, lr 1e-4, 10% warm-up, cosine) on small steps of ~20 rows
[ -f $OUT/hft/summary.json ] || .venv/bin/opo sft data=$OUT/data/hybrid.jsonl "$TAGS" data.eval_size=16 \
  sft.batch_tokens=2048 sft.micro_batch_tokens=2048 run.progress=false run.dir=$OUT/hft > $OUT/hft.log 2>&1

# 3. HGPO: 30 steps x 8 prompts x 4 samples (2 per mode, the paper's N = 4); HAcc before and after
[ -f $OUT/hgpo/summary.json ] || .venv/bin/opo train model.path="$(last_checkpoint $OUT/hft)" "${TASK[@]}" \
  hybrid.enabled=true algo.advantage=hgpo hybrid.group_by=num_terms rollout.samples_per_prompt=4 \
  rollout.max_new_tokens=128 train.eval_max_new_tokens=128 train.eval_temperature=0.7 optim.lr=2e-5 \
  train.steps=30 checkpoint.every=10 run.progress=false run.dir=$OUT/hgpo > $OUT/hgpo.log 2>&1
# (the run of docs/hybrid.md was stopped with SIGTERM after step 23: p_think had been 0.000 since step 8)

# 4. the HGPO model evaluated as in training (same sampler seed as train's held-out evaluation)
EVAL=(task=reasoning_gym hybrid.enabled=true hybrid.group_by=num_terms max_new_tokens=128 temperature=0.7
      run.seed=10000 run.progress=false)
[ -f $OUT/hgpo_eval/summary.json ] || .venv/bin/opo eval model.path="$(last_checkpoint $OUT/hgpo)" "${TASK[@]}" \
  "${EVAL[@]}" run.dir=$OUT/hgpo_eval > $OUT/hgpo_eval.log 2>&1

# 5. a longer HFT (10 epochs instead of the paper's 3), evaluated the same way
[ -f $OUT/hft10/summary.json ] || .venv/bin/opo sft data=$OUT/data/hybrid.jsonl "$TAGS" data.eval_size=16 \
  sft.epochs=10 sft.batch_tokens=2048 sft.micro_batch_tokens=2048 run.progress=false run.dir=$OUT/hft10 > $OUT/hft10.log 2>&1
[ -f $OUT/hft10_eval/summary.json ] || .venv/bin/opo eval model.path="$(last_checkpoint $OUT/hft10)" "${TASK[@]}" \
  "${EVAL[@]}" run.dir=$OUT/hft10_eval > $OUT/hft10_eval.log 2>&1
echo "done: $OUT/{data,hft,hgpo,hgpo_eval,hft10,hft10_eval}/summary.json"
