"""The task contract: examples with chat messages and a reference, and a scorer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Example:
    """One problem: the prompt as chat ``messages``, the ``reference`` answer, free ``metadata``."""

    messages: list[dict[str, str]]
    reference: str
    metadata: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    """A source of training and held-out examples plus a verifiable reward."""

    name: str

    def train_example(self, index: int) -> Example:
        """The ``index``-th training example (deterministic, so a run resumes at a data position)."""
        ...

    def eval_examples(self) -> list[Example]:
        """The fixed held-out set."""
        ...

    def score(self, completion: str, example: Example) -> float:
        """Reward of one completion in [0, 1]; 1 means correct."""
        ...
