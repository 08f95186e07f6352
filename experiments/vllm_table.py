"""The figures of docs/vllm.md from the runs of experiments/vllm_demo.sh.

    python experiments/vllm_table.py [runs]
"""

import json
import sys
from pathlib import Path

RUNS = {"demo-vllm": "default run, vLLM fp32 sampler",
        "demo-vllm-bf16-none": "vLLM bf16 sampler, fp32 trainer, no correction",
        "demo-vllm-bf16-tis": "vLLM bf16 sampler, fp32 trainer, tis (C = 2)",
        "demo-vllm-bf16-mis": "vLLM bf16 sampler, fp32 trainer, mis (C = 2)"}


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in open(run / "metrics.jsonl")] if (run / "metrics.jsonl").exists() else []


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def timing(steps: list[dict]) -> str:
    return (f"{mean([x['time/step'] for x in steps]):.1f} ({mean([x['time/generate'] for x in steps]):.1f} / "
            f"{mean([x['time/train'] for x in steps]):.1f})")


def main(root: Path) -> None:
    print("| run | steps | held-out greedy before | after | s/step (generate / train), steps 2+ | same, last half "
          "of the steps | train reward, first 5 / last 5 steps |")
    print("|---|---|---|---|---|---|---|")
    for name, label in RUNS.items():
        r = rows(root / name)
        steps = [x for x in r if "time/step" in x]
        evals = [x for x in r if "eval/accuracy" in x]
        if not steps:
            continue
        before = f"{evals[0]['eval/accuracy']:.1%}" if evals and evals[0]["step"] == 0 else "-"
        after = f"{evals[-1]['eval/accuracy']:.1%}" if evals and evals[-1]["step"] > 0 else "-"
        print(f"| {label} | {len(steps)} | {before} | {after} | {timing(steps[1:] or steps)} | "
              f"{timing(steps[len(steps) // 2:])} | {mean([x['reward/mean'] for x in steps[:5]]):.3f} / {mean([x['reward/mean'] for x in steps[-5:]]):.3f} |")
    print("\n| run | mean log ratio | mean abs | max abs | tokens with ratio beyond [1/2, 2] | IS weight mean | "
          "tokens truncated / masked |")
    print("|---|---|---|---|---|---|---|")
    for name, label in RUNS.items():
        steps = [x for x in rows(root / name) if "logprob_gap/mean_abs" in x]
        if not steps:
            continue
        w = [x["correction/weight_mean"] for x in steps if "correction/weight_mean" in x]
        a = [x["correction/affected"] for x in steps if "correction/affected" in x]
        weights = f"{mean(w):.5f} | {mean(a):.2e}" if w else "- | -"
        print(f"| {label} | {mean([x['logprob_gap/mean'] for x in steps]):.2e} | "
              f"{mean([x['logprob_gap/mean_abs'] for x in steps]):.2e} | "
              f"{max(x['logprob_gap/max_abs'] for x in steps):.2e} | "
              f"{mean([x['logprob_gap/over_threshold'] for x in steps]):.2e} | {weights} |")

if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs"))
