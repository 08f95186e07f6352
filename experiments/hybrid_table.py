"""The tables of docs/hybrid.md from a hybrid run's summary.json: before and after HGPO, overall and
per difficulty value.   .venv/bin/python experiments/hybrid_table.py runs/demo-hybrid/hgpo"""

import json
import sys
from pathlib import Path

ROWS = [("HAcc", "hybrid/{}hacc", "%"), ("think rate (own choice)", "hybrid/{}think_rate", "%"),
        ("no tag (own choice)", "hybrid/{}untagged_rate", "%"), ("thinking is better (reference)", "hybrid/{}reference_think_rate", "%"),
        ("accuracy, own choice (greedy)", "eval/{}accuracy", "%"), ("length, own choice", "eval/{}length", "f"),
        ("accuracy, thinking forced", "hybrid/{}think_accuracy", "%"), ("length, thinking forced", "hybrid/{}think_length", "f"),
        ("accuracy, no thinking forced", "hybrid/{}no_think_accuracy", "%"),
        ("length, no thinking forced", "hybrid/{}no_think_length", "f")]


def cell(metrics: dict, key: str, kind: str) -> str:
    if key not in metrics:
        return "-"
    return f"{metrics[key]:.1%}" if kind == "%" else f"{metrics[key]:.1f}"


def table(before: dict, after: dict, prefix: str = "") -> str:
    lines = ["| | before HGPO | after HGPO |", "|---|---|---|"]
    lines += [f"| {name} | {cell(before, key.format(prefix), k)} | {cell(after, key.format(prefix), k)} |"
              for name, key, k in ROWS]
    return "\n".join(lines)


PER_GROUP = [("think rate", "hybrid/{}think_rate"), ("HAcc", "hybrid/{}hacc"), ("thinking better", "hybrid/{}reference_think_rate"),
             ("accuracy (own choice)", "eval/{}accuracy"), ("accuracy thinking", "hybrid/{}think_accuracy"),
             ("accuracy no thinking", "hybrid/{}no_think_accuracy")]


def per_group(before: dict, after: dict, groups: list[str]) -> str:
    """One row per difficulty value; each cell 'before -> after'."""
    lines = ["| " + " | ".join(["difficulty", "n"] + [name for name, _ in PER_GROUP]) + " |",
             "|" + "---|" * (2 + len(PER_GROUP))]
    for g in groups:
        cells = [f"{cell(before, k.format(g + '/'), '%')} -> {cell(after, k.format(g + '/'), '%')}" for _, k in PER_GROUP]
        lines.append(f"| {g.removeprefix('by_')} | {int(after[f'eval/{g}/n'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(run: str) -> None:
    summary = json.loads((Path(run) / "summary.json").read_text())
    before, after = summary["before"], summary["after"]
    print(f"all {int(after['eval/n'])} held-out problems\n\n{table(before, after)}\n")
    groups = sorted({"/".join(k.split("/")[1:3]) for k in after if k.startswith("hybrid/by_")})
    if groups:
        print(per_group(before, after, groups))


if __name__ == "__main__":
    main(sys.argv[1])
