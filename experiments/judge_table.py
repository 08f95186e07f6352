"""The figures of docs/judges.md from runs/demo-judge (experiments/judge_demo.sh).

    python experiments/judge_table.py [runs/demo-judge]
"""

import json
import sys
from pathlib import Path


def metrics(path: Path) -> dict:
    return json.loads(path.read_text())["metrics"] if path.exists() else {}


def main(out: Path) -> None:
    pairs = {name: sum(1 for _ in open(out / f"pairs_{name}.jsonl")) for name in ("heldout", "train")}
    print(f"pairs: {pairs['train']} training, {pairs['heldout']} held-out")
    for name in ("pool", "heldout"):
        m = metrics(out / name / "summary.json")
        print(f"policy answers ({name}): {int(m['eval/n'])} problems, avg@8 {m['eval/avg@n']:.1%}, "
              f"pass@8 {m['eval/pass@8']:.1%}" + (f", greedy {m['eval/accuracy']:.1%}" if "eval/accuracy" in m else ""))
    runs = {"judge_v1": "OPO 40 steps, one random order per example", "judge": "OPO, both orders per step"}
    summaries = {k: json.loads((out / k / "summary.json").read_text()) for k in runs if (out / k / "summary.json").exists()}
    print("\n| judge | held-out pairwise accuracy (greedy) | chosen shown 1st | chosen shown 2nd | no verdict |")
    print("|---|---|---|---|---|")
    rows = [("embedded, untrained (64 tokens)", metrics(out / "pairwise_embedded" / "summary.json")),
            ("format SFT (random verdicts)", summaries.get("judge_v1", {}).get("before", {}))]
    rows += [(label, summaries[k]["after"]) for k, label in runs.items() if "after" in summaries.get(k, {})]
    for label, m in rows:
        if m:
            print(f"| {label} | {m['eval/accuracy']:.1%} | {m.get('eval/by_chosen_shown/1/accuracy', 0):.1%} | "
                  f"{m.get('eval/by_chosen_shown/2/accuracy', 0):.1%} | {m['eval/no_answer']:.1%} |")
    for k in summaries:
        curve = [(r["step"], r["eval/accuracy"]) for r in map(json.loads, open(out / k / "metrics.jsonl"))
                 if "eval/accuracy" in r]
        print(f"{k}: held-out pairwise accuracy by step: " + ", ".join(f"{s}: {a:.1%}" for s, a in curve))
    for name in ("format", "judge_v1", "judge"):
        m = metrics(out / f"pairwise_{name}_sampled" / "summary.json")
        if m:
            print(f"sampled verdicts ({name}): avg@8 {m['eval/avg@n']:.1%}, maj@8 {m['eval/maj@8']:.1%}")
    print("\n| best-of-8 judge | oracle (pass@8) | majority | random | knockout | ELO | judge calls (knockout / ELO) |")
    print("|---|---|---|---|---|---|---|")
    for name in ("format", "judge_v1", "judge"):
        m = metrics(out / f"bo8_{name}" / "summary.json")
        if m:
            print(f"| {name} | {m['eval/pick_oracle']:.1%} | {m['eval/pick_majority']:.1%} | {m['eval/pick_random']:.1%} | "
                  f"{m['eval/pick_knockout']:.1%} | {m['eval/pick_elo']:.1%} | "
                  f"{m['eval/judge_calls_knockout']:.0f} / {m['eval/judge_calls_elo']:.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo-judge"))
