"""The tables of docs/hybrid.md: hybrid metrics of several models side by side, overall and per
difficulty value. Each column is LABEL=RUN_DIR, or LABEL=RUN_DIR:before for a training run's
evaluation before its first step (an `opo eval` run's metrics otherwise; a finished `opo train`
run's evaluation after training with :after).
    .venv/bin/python experiments/hybrid_table.py HFT=runs/demo-hybrid/hgpo:before HGPO=runs/demo-hybrid/hgpo_eval"""

import json
import sys
from pathlib import Path

ROWS = [("HAcc", "hybrid/{}hacc", "%"), ("think rate (own choice)", "hybrid/{}think_rate", "%"),
        ("no tag first (own choice)", "hybrid/{}untagged_rate", "%"),
        ("thinking is the better mode", "hybrid/{}reference_think_rate", "%"),
        ("accuracy, own choice (greedy)", "eval/{}accuracy", "%"), ("length, own choice", "eval/{}length", "f"),
        ("accuracy, thinking forced", "hybrid/{}think_accuracy", "%"),
        ("length, thinking forced", "hybrid/{}think_length", "f"),
        ("accuracy, no thinking forced", "hybrid/{}no_think_accuracy", "%"),
        ("length, no thinking forced", "hybrid/{}no_think_length", "f")]
PER_GROUP = ["think_rate", "hacc", "reference_think_rate", "think_accuracy", "no_think_accuracy"]


def load(spec: str) -> tuple[str, dict]:
    label, _, source = spec.partition("=")
    run, _, part = source.partition(":")
    summary = json.loads((Path(run) / "summary.json").read_text())
    return label, summary[part] if part else summary["metrics"]


def cell(metrics: dict, key: str, kind: str = "%") -> str:
    if key not in metrics:
        return "-"
    return f"{metrics[key]:.1%}" if kind == "%" else f"{metrics[key]:.1f}"


def main(specs: list[str]) -> None:
    cols = [load(s) for s in specs]
    print(f"{int(cols[0][1]['eval/n'])} held-out problems\n")
    print("| | " + " | ".join(label for label, _ in cols) + " |\n|---|" + "---|" * len(cols))
    for name, key, kind in ROWS:
        print(f"| {name} | " + " | ".join(cell(m, key.format(""), kind) for _, m in cols) + " |")
    groups = sorted({"/".join(k.split("/")[1:3]) for k in cols[0][1] if k.startswith("hybrid/by_")})
    if groups:  # one row per difficulty value, each cell the models' values in column order
        print("\n| difficulty | n | " + " | ".join(PER_GROUP) + " |\n|---|---|" + "---|" * len(PER_GROUP))
    for g in groups:
        print(f"| {g.removeprefix('by_')} | {int(cols[0][1][f'eval/{g}/n'])} | "
              + " | ".join(" / ".join(cell(m, f"hybrid/{g}/{name}") for _, m in cols) for name in PER_GROUP) + " |")

if __name__ == "__main__":
    main(sys.argv[1:])
