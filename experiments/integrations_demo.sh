#!/usr/bin/env bash
# Datasets, tracking and the Python API on this CPU (docs/datasets.md, docs/tracking.md):
# 1. GSM8K saved by the datasets library as parquet and as a save_to_disk directory, evaluated with
#    task=dataset, against opo's shipped JSONL copy (task=gsm8k): the same problems, the same answers;
# 2. a short run of the default task logged to an offline W&B run and TensorBoard beside metrics.jsonl,
#    then what `wandb sync --dry-run` would upload.
#   experiments/integrations_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OPO=.venv/bin/opo
D=runs/demo-integrations
mkdir -p $D

$PY - <<'PY'
import datasets
rows = datasets.load_dataset("json", data_files="src/opo/data/gsm8k_test.jsonl", split="train")
rows.to_parquet("runs/demo-integrations/gsm8k_test.parquet")
datasets.DatasetDict({"test": rows}).save_to_disk("runs/demo-integrations/gsm8k_saved")
print(f"{len(rows)} rows, columns {rows.column_names}")
PY
EVAL=(limit=50 max_new_tokens=256 run.threads=2 run.progress=false)
$OPO eval task=gsm8k "${EVAL[@]}" run.dir=$D/eval-jsonl
$OPO eval task=dataset data_path=$D/gsm8k_test.parquet task.answer_format=gsm8k "${EVAL[@]}" run.dir=$D/eval-parquet
$OPO eval task=dataset data_path=$D/gsm8k_saved task.split=test task.answer_format=gsm8k "${EVAL[@]}" \
  run.dir=$D/eval-saved
$PY - <<'PY'
import json
runs = ["eval-jsonl", "eval-parquet", "eval-saved"]
samples = {r: [json.loads(l) for l in open(f"runs/demo-integrations/{r}/samples.jsonl")] for r in runs}
for r in runs:
    m = json.load(open(f"runs/demo-integrations/{r}/summary.json"))["metrics"]
    print(f"{r}: greedy accuracy {m['eval/accuracy']:.1%} over {int(m['eval/n'])} problems")
same = all([(s["prompt"], s["completion"], s["correct"]) for s in samples[r]] ==
           [(s["prompt"], s["completion"], s["correct"]) for s in samples["eval-jsonl"]] for r in runs)
print("identical prompts, completions and verdicts in all three:", same)
PY

rm -rf $D/train-tracked
WANDB_MODE=offline $OPO train train.steps=3 task.eval_size=20 train.wandb.enabled=true train.wandb.mode=offline \
  train.wandb.tags=[demo] train.tensorboard=true run.threads=2 run.progress=false run.dir=$D/train-tracked
ls $D/train-tracked $D/train-tracked/wandb
(cd $D/train-tracked && ../../../.venv/bin/wandb sync --dry-run wandb/offline-run-* 2>&1 | tail -3)
