"""Position bias: judges prefer a position. Show each pair in a random order (default) or in both
orders, and count where the two orders disagree (RRM, arXiv 2505.14674, judges each pair once in a
fixed order; both are options here because small judges lean hard on position)."""

from __future__ import annotations

import random
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Literal, Optional

from opo.judges.base import Judge, Judgment

Order = Literal["random", "both", "fixed"]


@dataclass
class Verdict:
    """A comparison of response ``a`` with response ``b``. ``score``: 1.0 a is better, 0.0 b is
    better, 0.5 no verdict (or, in both orders, the orders disagree); ``judgments``: one per order
    judged, each in the order shown; ``disagree``: both orders judged and each picked a different
    response."""

    score: float
    judgments: list[Judgment]
    disagree: bool = False


def _score(j: Judgment, a_first: bool) -> float:
    """a's score from one judgment, given whether a was shown as Assistant 1."""
    if j.choice is None:
        return 0.5
    return 1.0 if (j.choice == 1) == a_first else 0.0


class PairJudge:
    """Compares (query, a, b) with ``judge``, deciding the order shown; keeps counts for metrics."""

    def __init__(self, judge: Judge, order: Order = "random", seed: int = 0) -> None:
        if order not in ("random", "both", "fixed"):
            raise ValueError(f"judge order must be random, both or fixed, got {order!r}")
        self.judge = judge
        self.order = order
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()  # calls, statuses, disagreements, both-order comparisons
        self.first_failure: Optional[str] = None  # what the first failed call said, for one warning

    def reseed(self, value: int) -> None:
        """Restart the order draws, and the judge's sampling where it has a seed, from ``value``."""
        self.rng.seed(value)
        reseed = getattr(self.judge, "reseed", None)
        if reseed is not None:
            reseed(value)

    def compare(self, items: list[tuple[str, str, str]]) -> list[Verdict]:
        """A verdict per (query, a, b); every judge call of the batch goes out in one ``judge`` call."""
        if self.order == "both":
            shown = [(q, a, b) for q, a, b in items] + [(q, b, a) for q, a, b in items]
            firsts = [True] * len(items) + [False] * len(items)
        else:
            firsts = [self.order == "fixed" or self.rng.random() < 0.5 for _ in items]
            shown = [(q, a, b) if f else (q, b, a) for (q, a, b), f in zip(items, firsts)]
        judgments = self.judge.judge(shown) if shown else []
        self.counts["calls"] += len(judgments)
        self.counts.update(f"status/{j.status}" for j in judgments)
        if self.first_failure is None:
            failed = next((j for j in judgments if j.status in ("timeout", "error")), None)
            if failed is not None:
                self.first_failure = f"{self.judge.name}: {failed.status}" + (f" ({failed.reasoning})"
                                                                             if failed.reasoning else "")
                print(f"opo: warning: judge call failed, counted as a tie: {self.first_failure}", file=sys.stderr)
        if self.order != "both":
            return [Verdict(_score(j, f), [j]) for j, f in zip(judgments, firsts)]
        out = []
        for j1, j2 in zip(judgments[: len(items)], judgments[len(items):]):
            s1, s2 = _score(j1, True), _score(j2, False)
            disagree = {s1, s2} == {0.0, 1.0}
            self.counts["pairs_both_orders"] += 1
            self.counts["disagreements"] += disagree
            out.append(Verdict(0.5 if disagree else (s1 + s2) / 2, [j1, j2], disagree))
        return out

    def metrics(self, counts: Optional[Counter[str]] = None, prefix: str = "judge/") -> dict[str, float]:
        """``counts`` (default: all so far) as metrics: calls, failures (no verdict; timeouts and
        errors) and, with both orders, the share of pairs whose orders disagree."""
        c = self.counts if counts is None else counts
        out = {f"{prefix}calls": float(c["calls"]),
               f"{prefix}no_verdict": float(c["status/no_verdict"] + c["status/bad_verdict"]),
               f"{prefix}failures": float(c["status/timeout"] + c["status/error"])}
        if c["pairs_both_orders"]:
            out[f"{prefix}order_disagreement"] = c["disagreements"] / c["pairs_both_orders"]
        return out
