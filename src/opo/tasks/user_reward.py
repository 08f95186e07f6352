"""A task whose scorer is replaced by the user's reward function (``task.reward_fn``).

The function runs in :class:`opo.rewards.grader.GraderPool` worker processes, so a call that
hangs is killed at its deadline and a crash stays in its worker; either way the sample gets
``on_error`` as its reward and keeps its status (``error`` or ``timeout``) for the metrics. What the
function prints, at import or in a call, appears on stderr, each line starting with ``[reward_fn]``.
"""

from __future__ import annotations

from typing import Callable, Optional

from opo.rewards.grader import GraderPool
from opo.tasks.base import Example, Graded, Task


class UserRewardTask:
    """``task``'s examples and answer extraction, graded by ``fn(completion, reference, metadata) -> float``."""

    def __init__(self, task: Task, fn: str, workers: int, timeout: float, on_error: float) -> None:
        self.task = task
        self.name = task.name
        self.on_error = on_error
        # what the function prints reaches the user, marked as its own
        self.pool = GraderPool(workers, timeout, fn, output="[reward_fn] ")

    def train_example(self, index: int) -> Example:
        return self.task.train_example(index)

    def eval_examples(self) -> list[Example]:
        return self.task.eval_examples()

    @property
    def skipped_rows(self) -> int:
        return self.task.skipped_rows

    @property
    def held_out_repeats(self) -> int:
        return self.task.held_out_repeats

    def limit_prompts(self, problem: Callable[[Example], Optional[str]]) -> None:
        self.task.limit_prompts(problem)

    def answer(self, completion: str) -> Optional[str]:
        return self.task.answer(completion)

    def grade(self, completions: list[str], examples: list[Example]) -> list[Graded]:
        scores = self.pool.map([[c, ex.reference, ex.metadata] for c, ex in zip(completions, examples)])
        return [Graded(self.answer(c), s.value, s.value >= 1.0, "ok") if s.status == "ok"
                else Graded(self.answer(c), self.on_error, False, s.status) for c, s in zip(completions, scores)]

    def close(self) -> None:
        self.pool.close()
        self.task.close()
