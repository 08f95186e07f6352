"""The accuracy table of docs/lora.md from the runs of experiments/lora_demo.sh.

    python experiments/lora_table.py [runs]
"""

import json
import sys
from pathlib import Path

RUNS = {"full-lr1e-5": "full fine-tuning, lr 1e-5 (the default)",
        "lora-r16-lr1e-4": "LoRA r16 alpha 32, lr 1e-4 (10x)",
        "lora-r16-lr1e-5": "LoRA r16 alpha 32, lr 1e-5 (1x)"}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main(root: Path) -> None:
    print("| run | trainable parameters | held-out greedy before | after | gain | train reward, steps 1-5 / 26-30 "
          "| entropy, steps 1-5 / 26-30 | policy shift k3, mean of measured steps | grad norm, mean |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, label in RUNS.items():
        summary_file = root / name / "summary.json"
        if not summary_file.exists():
            continue
        summary = json.loads(summary_file.read_text())
        rows = [json.loads(line) for line in open(root / name / "metrics.jsonl")]
        steps = [r for r in rows if "reward/mean" in r]
        shift = [r["policy_shift/k3"] for r in steps if "policy_shift/k3" in r]
        before, after = summary["before"]["eval/accuracy"], summary["after"]["eval/accuracy"]
        first, last = steps[:5], steps[-5:]
        print(f"| {label} | {summary['params/trainable']:,.0f} of {summary['params/total']:,.0f} | {before:.1%} | "
              f"{after:.1%} | {100 * (after - before):+.1f} points | "
              f"{mean([r['reward/mean'] for r in first]):.3f} / {mean([r['reward/mean'] for r in last]):.3f} | "
              f"{mean([r['entropy'] for r in first]):.3f} / {mean([r['entropy'] for r in last]):.3f} | "
              f"{mean(shift):.2e} | {mean([r['grad_norm'] for r in steps]):.3f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs"))
