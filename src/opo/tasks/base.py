"""The task contract: examples with chat messages and a reference, and a scorer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol


@dataclass
class Example:
    """One problem: the prompt as chat ``messages``, the ``reference`` answer, free ``metadata``."""

    messages: list[dict[str, str]]
    reference: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graded:
    """The verdict on one completion: extracted ``answer`` (None if none), ``reward``, ``correct``,
    and ``status`` (``ok``, ``no_answer``, ``timeout``, ``error``)."""

    answer: Optional[str]
    reward: float
    correct: bool
    status: str


def question_key(question: str) -> str:
    """What makes two questions the same one: their text with runs of whitespace made one space."""
    return " ".join(question.split())


def prompt_messages(system_prompt: Optional[str], template: str, question: str) -> list[dict[str, str]]:
    """The chat messages of one problem: the system prompt, if any, and ``template`` with each
    ``{question}`` replaced by ``question`` verbatim. Nothing else in either is interpreted, so
    ``\\boxed{}`` in a template and braces in a question stay as they are (no ``str.format``)."""
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    messages.append({"role": "user", "content": template.replace("{question}", question)})
    return messages


class Task(Protocol):
    """A source of training and held-out examples plus a verifiable reward."""

    name: str
    skipped_rows: int  # data rows left out by task.skip_bad_rows (0 for generated tasks)
    held_out_repeats: int  # training rows/items passed over because they repeat a held-out question

    def train_example(self, index: int) -> Example:
        """The ``index``-th training example (deterministic, so a run resumes at a data position)."""
        ...

    def eval_examples(self) -> list[Example]:
        """The fixed held-out set."""
        ...

    def answer(self, completion: str) -> Optional[str]:
        """The final answer the task's extractor finds in a completion, or None."""
        ...

    def grade(self, completions: list[str], examples: list[Example]) -> list[Graded]:
        """Verdicts on completions of the given examples (one each)."""
        ...

    def limit_prompts(self, problem: Callable[[Example], Optional[str]]) -> None:
        """Refuse (or, where the task may, leave out) examples for which ``problem`` returns a reason."""
        ...

    def close(self) -> None:
        """Release worker processes, if any."""
        ...
