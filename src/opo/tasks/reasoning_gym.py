"""Any reasoning-gym generator by name, scored by its own scorer."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import reasoning_gym

from opo.rewards.extract import EXTRACTORS
from opo.tasks.base import Example, Graded, prompt_messages, question_key


class ReasoningGymTask:
    """Training and held-out examples from one reasoning-gym generator.

    Training example ``i`` is item ``i`` of the generator seeded with ``seed``; the held-out set
    is the first ``eval_size`` distinct questions of the generator seeded with ``eval_seed``. With
    ``exclude_eval=True`` training skips (and counts in ``held_out_repeats``) any question that also
    appears in the held-out set, compared with whitespace runs as one space, so held-out accuracy
    measures generalisation even when the problem space is small. When every generated question is
    held out, asking for a training example raises ValueError (with ``for_training``: at construction).
    """

    def __init__(
        self,
        generator: str,
        generator_args: dict[str, Any],
        prompt_template: str,
        system_prompt: Optional[str],
        extractor: str,
        seed: int,
        eval_seed: int,
        eval_size: int,
        exclude_eval: bool,
        binary_reward: bool,
        train_size: int = 1_000_000,
        for_training: bool = False,
    ) -> None:
        self.name = generator
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.extract = EXTRACTORS.get(extractor)
        self.binary_reward = binary_reward
        try:
            self._train = reasoning_gym.create_dataset(generator, seed=seed, size=train_size, **generator_args)
            pool = reasoning_gym.create_dataset(generator, seed=eval_seed, size=20 * eval_size, **generator_args)
        except (TypeError, ValueError, KeyError, AssertionError) as e:
            raise ValueError(f"task: cannot build reasoning-gym generator '{generator}' with {generator_args}: {e}") from e
        self._eval_items = _distinct(pool, eval_size, generator)
        self.eval_size = eval_size
        self._excluded = {question_key(e["question"]) for e in self._eval_items} if exclude_eval else set()
        # Training indices skip excluded questions; map logical index -> generator index lazily.
        self._index: list[int] = []
        self._next_raw = 0
        self._problem: Optional[Callable[[Example], Optional[str]]] = None
        self.skipped_rows = 0  # generated problems have no rows to skip
        self.held_out_repeats = 0  # generated items passed over so far for repeating a held-out question
        if for_training:
            self._raw_index(0)  # fails now, before a model loads, if nothing is left to train on

    def _raw_index(self, index: int) -> int:
        while len(self._index) <= index:
            if self._next_raw >= self._train.size:
                raise ValueError(f"task '{self.name}': training stream exhausted after {len(self._index)} examples")
            if question_key(self._train[self._next_raw]["question"]) in self._excluded:
                self.held_out_repeats += 1
            else:
                self._index.append(self._next_raw)
            self._next_raw += 1
            if self._next_raw >= 1000 and not self._index:
                raise ValueError(f"task.eval_size={self.eval_size} holds out every question that generator "
                                 f"'{self.name}' produced in its first {self._next_raw} training items: nothing is "
                                 "left for training; lower task.eval_size or widen task.generator_args")
        return self._index[index]

    def _example(self, item: dict[str, Any]) -> Example:
        messages = prompt_messages(self.system_prompt, self.prompt_template, item["question"])
        return Example(messages, str(item["answer"]), {"entry": item})

    def train_example(self, index: int) -> Example:
        return self._checked(self._example(self._train[self._raw_index(index)]), f"training example {index}")

    def limit_prompts(self, problem: Callable[[Example], Optional[str]]) -> None:
        """Check the held-out prompts now and each training prompt when it is drawn: ``problem`` says
        what is wrong with one, or None. Generated problems cannot be skipped: a bad one raises."""
        self._problem = problem
        for i, example in enumerate(self.eval_examples()):
            self._checked(example, f"held-out example {i}")

    def _checked(self, example: Example, where: str) -> Example:
        reason = None if self._problem is None else self._problem(example)
        if reason is not None:
            raise ValueError(f"task '{self.name}' (reasoning_gym), {where}: {reason}; make the problems smaller "
                             "(task.generator_args) or lower max_new_tokens")
        return example

    def eval_examples(self) -> list[Example]:
        return [self._example(item) for item in self._eval_items]

    def answer(self, completion: str) -> Optional[str]:
        return self.extract(completion)

    def grade(self, completions: list[str], examples: list[Example]) -> list[Graded]:
        out = []
        for completion, example in zip(completions, examples):
            answer = self.answer(completion)
            if answer is None:
                out.append(Graded(None, 0.0, False, "no_answer"))
                continue
            try:
                score = float(self._train.score_answer(answer, example.metadata["entry"]))
            except Exception:  # a scorer bug must not end the run: reward 0, counted as a grader error
                out.append(Graded(answer, 0.0, False, "error"))
                continue
            if not math.isfinite(score):
                out.append(Graded(answer, 0.0, False, "error"))
                continue
            reward = float(score >= 1.0) if self.binary_reward else score
            out.append(Graded(answer, reward, score >= 1.0, "ok"))
        return out

    def close(self) -> None:
        pass


def _distinct(pool: Any, size: int, name: str) -> list[dict[str, Any]]:
    """The first ``size`` items of ``pool`` with distinct questions."""
    seen: dict[str, dict[str, Any]] = {}
    for i in range(pool.size):
        item = pool[i]
        seen.setdefault(question_key(item["question"]), item)
        if len(seen) == size:
            return list(seen.values())
    raise ValueError(f"task '{name}': only {len(seen)} distinct held-out questions exist; lower task.eval_size")
