"""Markdown table of runs grouped by name (the part before '-s<seed>'): mean over seeds [min, max].

    .venv/bin/python experiments/table.py runs/compare/*/
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = [  # (header, function of (summary, step rows) -> value, format)
    ("held-out greedy acc.", lambda s, rows: s["after"]["eval/accuracy"], "{:.1%}"),
    ("pass@1", lambda s, rows: s["after"]["eval/pass@1"], "{:.1%}"),
    ("pass@4", lambda s, rows: s["after"]["eval/pass@4"], "{:.1%}"),
    ("mean entropy", lambda s, rows: _mean(rows, "entropy"), "{:.3f}"),
    ("mean policy shift (k3)", lambda s, rows: _mean(rows, "policy_shift/k3"), "{:.2e}"),
    ("repeated 4-grams", lambda s, rows: _mean(rows, "repetition/ngram_frac"), "{:.2%}"),
    ("degenerate responses", lambda s, rows: _mean(rows, "repetition/degenerate"), "{:.2%}"),
    ("final train reward", lambda s, rows: _mean(rows[-5:], "reward/mean"), "{:.3f}"),
]


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / len(vals)


def main(dirs: list[str]) -> None:
    groups: dict[str, list[list[float]]] = defaultdict(list)
    for d in dirs:
        path = Path(d)
        summary = json.loads((path / "summary.json").read_text())
        rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if x.strip()]
        rows = [r for r in rows if "reward/mean" in r]
        name = re.sub(r"-s\d+$", "", path.name)
        groups[name].append([fn(summary, rows) for _, fn, _ in COLUMNS])
    print("| run | seeds | " + " | ".join(h for h, _, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for name, runs in groups.items():
        cells = []
        for i, (_, _, fmt) in enumerate(COLUMNS):
            vals = [r[i] for r in runs]
            cell = fmt.format(sum(vals) / len(vals))
            if len(vals) > 1:
                cell += f" [{fmt.format(min(vals))}, {fmt.format(max(vals))}]"
            cells.append(cell)
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
