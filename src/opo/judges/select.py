"""Best-of-n with a judge (RRM, arXiv 2505.14674, Sec. 3.3): pick one of each problem's n sampled
responses by a tournament, and set the pick's accuracy beside the oracle (pass@n: any sample
correct), the majority vote (maj@n) and a random pick (the mean accuracy of the samples)."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from opo.judges.pairwise import PairJudge
from opo.judges.tournament import Plan, knockout_plan, play, round_robin_plan
from opo.metrics import majority_vote


def best_of_n(samples: list[Any], judge: PairJudge, tournaments: list[str], *, votes: int = 1, rating: str = "elo",
              seed: int = 0) -> tuple[dict[str, float], dict[str, dict[int, int]]]:
    """Metrics ``eval/pick_<name>`` for each tournament plus ``pick_oracle``, ``pick_majority``,
    ``pick_random`` and the judge's counts; and each tournament's pick (sample index within its
    problem) per problem. ``samples``: :class:`opo.evaluate.Sample` objects; the sampled ones count."""
    by_problem: dict[int, list[Any]] = defaultdict(list)
    for s in samples:
        if s.mode == "sampled":
            by_problem[s.problem].append(s)
    problems = sorted(by_problem)
    if not problems:
        return {}, {}
    groups = [by_problem[p] for p in problems]
    out = {"eval/pick_oracle": _mean(any(s.correct for s in g) for g in groups),
           "eval/pick_majority": _mean(majority_vote([s.answer for s in g], [s.correct for s in g]) for g in groups),
           "eval/pick_random": _mean(sum(s.correct for s in g) / len(g) for g in groups)}
    picks: dict[str, dict[int, int]] = {}
    for name in tournaments:
        before = dict(judge.counts)
        judge.reseed(seed + len(picks))  # each tournament samples its own verdicts (no cache reuse)
        rng = random.Random(f"{seed}:{name}")
        plans: list[Plan] = [knockout_plan(len(g), votes=votes, rng=rng) if name == "knockout"
                             else round_robin_plan(len(g), rating=rating, rng=rng) for g in groups]

        def compare(requests: list[tuple[int, int, int]]) -> list[float]:
            return [v.score for v in judge.compare([(groups[k][i].prompt, groups[k][i].completion,
                                                     groups[k][j].completion) for k, i, j in requests])]

        standings = play(plans, compare)
        picks[name] = {p: s.best for p, s in zip(problems, standings)}
        out[f"eval/pick_{name}"] = _mean(g[s.best].correct for g, s in zip(groups, standings))
        out[f"eval/judge_calls_{name}"] = float(judge.counts["calls"] - before.get("calls", 0))
    out.update({k.replace("judge/", "eval/judge_"): v for k, v in judge.metrics().items() if k != "judge/calls"})
    return out, picks


def _mean(values: Any) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)
