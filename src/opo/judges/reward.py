"""Judge rewards for ``opo train`` (the group form of the reward contract): the K completions of a
prompt are scored together by a tournament among them (:func:`opo.judges.tournament.reward_plan`),
all prompts' tournaments side by side so that each round is one batch of judge calls.

The task keeps its examples and its verifier: held-out evaluation still grades with the verifier,
and during training ``correct`` says what the verifier thinks of each completion, so a run shows
how far the judge's reward agrees with the truth (``judge/verifier_agreement``).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Optional

from opo.judges.pairwise import PairJudge
from opo.judges.tournament import play, reward_plan
from opo.tasks.base import Example, Graded, Task

COUNTS = ("judge/calls", "judge/no_verdict", "judge/failures", "judge/uninformed_groups")  # summed over processes


class JudgeRewards:
    """Grades a training step's completions with ``judge``'s tournaments (``mode``: knockout | elo |
    wins). Completions of one prompt share one :class:`Example` object, as the training loop passes
    them (each task builds a new object per ``train_example`` call): that is how groups are found."""

    def __init__(self, task: Task, judge: PairJudge, mode: str, *, opponents: int = 2, votes: int = 1,
                 rating: str = "elo", seed: int = 0) -> None:
        self.task, self.judge, self.mode = task, judge, mode
        self.opponents, self.votes, self.rating = opponents, votes, rating
        self.seed = seed
        self._step: dict[str, float] = {}

    def grade(self, completions: list[str], examples: list[Example]) -> list[Graded]:
        groups: dict[int, list[int]] = {}
        for k, ex in enumerate(examples):
            groups.setdefault(id(ex), []).append(k)
        members = list(groups.values())
        query = [examples[m[0]].messages[-1]["content"] for m in members]
        # orders, brackets and the judge's samples follow from the completions themselves, so a
        # resumed run grades its steps exactly as the first run did; orders and brackets draw
        # from separate streams, so a position-biased judge cannot favour a bracket slot
        key = int.from_bytes(hashlib.sha256("\0".join(completions).encode()).digest()[:8], "big") ^ self.seed
        self.judge.reseed(key)
        rng = random.Random(f"{key}:bracket")
        informed = [False] * len(members)  # some comparison of the group got a verdict

        def compare(requests: list[tuple[int, int, int]]) -> list[float]:
            verdicts = self.judge.compare([(query[g], completions[members[g][i]], completions[members[g][j]])
                                           for g, i, j in requests])
            for (g, _, _), v in zip(requests, verdicts):
                informed[g] = informed[g] or any(j.choice is not None for j in v.judgments)
            return [v.score for v in verdicts]

        before = Counter(self.judge.counts)
        standings = play([reward_plan(len(m), self.mode, opponents=self.opponents, votes=self.votes,
                                      rating=self.rating, rng=rng) for m in members], compare)
        verified = self.task.grade(completions, examples)
        rewards = [0.0] * len(completions)
        for g, (m, s) in enumerate(zip(members, standings)):
            for i, k in enumerate(m):
                # without a single verdict the bracket is coin flips: an equal reward teaches nothing
                rewards[k] = s.scores[i] if informed[g] else 0.5
        self._step = self.judge.metrics(self.judge.counts - before)
        self._step["judge/uninformed_groups"] = float(sum(not i for i in informed))
        self._step["judge/verifier_accuracy"] = sum(g.correct for g in verified) / max(1, len(verified))
        agreement = _agreement(members, rewards, [g.correct for g in verified])
        if agreement is not None:
            self._step["judge/verifier_agreement"] = agreement
        return [Graded(g.answer, r, g.correct, g.status) for g, r in zip(verified, rewards)]

    def metrics(self) -> dict[str, float]:
        """The last step's judge calls, verdict failures, groups without any verdict (equal rewards),
        the verifier's accuracy of the completions (``reward/accuracy`` counts rewards >= 1 instead)
        and the judge's agreement with it."""
        return dict(self._step)


def combine(parts: list[dict[str, float]]) -> dict[str, float]:
    """One step's judge metrics from every process's: counts summed, rates averaged."""
    out: dict[str, float] = {}
    for key in sorted({k for p in parts for k in p}):
        values = [p[key] for p in parts if key in p]
        out[key] = sum(values) if key in COUNTS else sum(values) / len(values)
    return out


def _agreement(members: list[list[int]], rewards: list[float], correct: list[bool]) -> Optional[float]:
    """Of the pairs within a group where the verifier tells one completion correct and the other
    not, the share the judge's reward orders the same way (ties count half); None when none."""
    agree, total = 0.0, 0
    for m in members:
        for a in m:
            for b in m:
                if correct[a] and not correct[b]:
                    total += 1
                    agree += 1.0 if rewards[a] > rewards[b] else 0.5 if rewards[a] == rewards[b] else 0.0
    return agree / total if total else None
