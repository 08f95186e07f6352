"""``opo pairs``: preference pairs for training a judge, from a model's own answers.

For each problem of an ``opo eval`` run's samples.jsonl, every distinct correct response may pair
with every distinct incorrect one (a response without an answer counts as incorrect); up to
``per_problem`` of those pairs are drawn with the seed. The query is the problem's prompt as the
model saw it, so the judge compares the responses to the question that was asked.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from opo import jsonl
from opo.config import PairsConfig
from opo.jsonl import BadRow
from opo.tasks.base import question_key

FIELDS = ("problem", "prompt", "completion", "correct", "reference", "answer")


def _sample(fields: dict, line: int) -> dict[str, Any]:
    missing = [f for f in FIELDS if f not in fields]
    if missing:
        raise BadRow(f"not an opo eval sample: no {', '.join(missing)}")
    return fields


def make_pairs(samples: list[dict[str, Any]], per_problem: int, rng: random.Random,
               exclude: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Pairs ``{query, chosen, rejected, ...}`` in problem order; ``exclude``: question keys left out."""
    by_problem: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        by_problem[s["problem"]].append(s)
    out = []
    for problem in sorted(by_problem):
        group = by_problem[problem]
        query = group[0]["prompt"]
        if question_key(query) in exclude:
            continue
        right = _distinct(s for s in group if s["correct"])
        wrong = _distinct(s for s in group if not s["correct"])
        pairs = [(c, w) for c in right for w in wrong]
        for c, w in rng.sample(pairs, min(per_problem, len(pairs))):
            out.append({"query": query, "chosen": c["completion"], "rejected": w["completion"], "problem": problem,
                        "reference": c["reference"], "chosen_answer": c["answer"], "rejected_answer": w["answer"]})
    return out


def _distinct(samples: Any) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for s in samples:
        seen.setdefault(s["completion"].strip(), s)
    return list(seen.values())


def run_pairs(cfg: PairsConfig) -> dict[str, Any]:
    samples, _ = jsonl.read_rows(Path(cfg.samples or ""), _sample, False, "", "samples")
    exclude: frozenset[str] = frozenset()
    if cfg.exclude:
        rows, _ = jsonl.read_rows(Path(cfg.exclude), lambda f, line: f, False, "", "exclude")
        exclude = frozenset(question_key(str(r.get("query", r.get("prompt", "")))) for r in rows)
    pairs = make_pairs(samples, cfg.per_problem, random.Random(cfg.seed), exclude)
    out = Path(cfg.out or "")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    tmp.replace(out)  # never a half-written pairs file
    problems = len({s["problem"] for s in samples})
    summary = {"pairs": len(pairs), "problems": problems, "problems_with_pairs": len({p["problem"] for p in pairs})}
    print(f"wrote {len(pairs)} pairs from {summary['problems_with_pairs']} of {problems} problems to {out}"
          + ("" if pairs else ": no problem has both a correct and an incorrect response"))
    return summary
