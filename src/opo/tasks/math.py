"""Math word problems from JSONL: GSM8K, MATH-500, AIME/AMC-style files, or any user file; or
from any dataset ``datasets`` reads (:mod:`opo.tasks.dataset`).

Rows are read eagerly and checked: a bad row is reported with file, line and field (a dataset:
split and row), or, with ``task.skip_bad_rows``, left out, named in a warning and counted. Answers are
graded by :mod:`opo.rewards.grader` (number fast path, math-verify under a hard timeout).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from opo import jsonl
from opo.jsonl import BadRow
from opo.rewards.grader import GraderPool, extract_answer, extract_gsm8k, grade_math
from opo.tasks.base import Example, Graded, prompt_messages, question_key

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
MATH_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Preset:
    path: str
    question_field: str
    answer_field: str
    answer_format: str  # "plain": the field is the answer; "gsm8k": the answer follows '#### '
    breakdown: tuple[str, ...] = ()


DEFAULT = Preset("", "question", "answer", "plain")  # fields of a user's file or dataset
PRESETS = {
    "gsm8k": Preset("gsm8k_test.jsonl", "question", "answer", "gsm8k"),
    "math500": Preset("math500.jsonl", "problem", "answer", "plain", ("subject", "level")),
}
EXTRACTION = {"math": ("boxed", "gsm8k", "last_number"), "boxed": ("boxed",)}
SKIP_KEY = "task.skip_bad_rows"


@dataclass
class Row:
    """One usable row of a data file: where it is, its question and reference answer, all its fields."""

    line: int
    question: str
    reference: str
    fields: dict[str, Any]


def parse_row(fields: dict, line: int, question_field: str, answer_field: str, answer_format: str) -> Row:
    """The row of one line's JSON object; BadRow says what is wrong."""
    for name in (question_field, answer_field):
        value = fields.get(name)
        if value is None or not str(value).strip():
            raise BadRow(f"field '{name}' is missing or empty")
    answer: Optional[str] = str(fields[answer_field])
    if answer_format == "gsm8k":
        answer = extract_gsm8k(answer)
        if answer is None:
            raise BadRow(f"field '{answer_field}' has no '#### <answer>' line")
    return Row(line, str(fields[question_field]), answer.strip(), fields)


@dataclass
class Source:
    """Rows read from one place and how messages name it: ``where`` leads its warnings, ``title``
    names it whole, :meth:`at` one of its rows (a file's line; a dataset split's row index)."""

    rows: list[Row]
    where: str
    title: str
    row_format: str = "{where}:{line}"
    skipped: list[str] = field(default_factory=list)  # '<row>: reason' of each row task.skip_bad_rows left out

    def at(self, row: Row) -> str:
        return self.row_format.format(where=self.where, line=row.line)


def read_file(path: Path, parse: Callable[[dict, int], Row], skip_bad_rows: bool) -> Source:
    """The rows of a JSONL file (bad ones as :func:`opo.jsonl.read_rows` says)."""
    rows, skipped = jsonl.read_rows(path, parse, skip_bad_rows, SKIP_KEY, "task data file")
    return Source(rows, str(path), f"task data file '{path}'", skipped=skipped)


class MathTask:
    """Held-out set = the first ``eval_size`` rows (0: all) of ``held_out`` if given, else of the
    rows; training cycles through the other rows (all of them with ``held_out``), with
    ``exclude_eval`` passing over (and counting in ``held_out_repeats``, with a warning) any row
    whose question repeats a held-out one (compared with whitespace runs as one space).

    With ``skip_bad_rows`` malformed rows (and, after :meth:`limit_prompts`, rows whose prompt does
    not fit the model) are left out with a warning and counted in ``skipped_rows``; otherwise the
    first one raises ValueError naming file and line. The rows come from ``source`` if given, else
    from the JSONL file ``path`` (None: the preset's shipped copy) read with ``parse``. A split that
    leaves no row to train on raises ValueError with the numbers: at construction with
    ``for_training`` (``opo train``), else when a training example is asked for (``opo eval`` holds
    out every row with eval_size 0 and never trains).
    """

    def __init__(
        self,
        name: str,
        path: Optional[str],
        question_field: Optional[str],
        answer_field: Optional[str],
        answer_format: Optional[str],
        prompt_template: Optional[str],
        system_prompt: Optional[str],
        extractor: Optional[str],
        eval_size: int,
        grader_workers: int = 2,
        grader_timeout: float = 5.0,
        skip_bad_rows: bool = False,
        exclude_eval: bool = True,
        for_training: bool = False,
        parse: Optional[Callable[[dict, int], Row]] = None,
        source: Optional[Source] = None,
        held_out: Optional[Source] = None,
    ) -> None:
        preset = PRESETS.get(name, DEFAULT)
        self.name = name
        self.breakdown = preset.breakdown
        self.skip_bad_rows = skip_bad_rows
        if source is None:
            fields = (question_field or preset.question_field, answer_field or preset.answer_field,
                      answer_format or preset.answer_format)
            parse = parse or (lambda row, line: parse_row(row, line, *fields))
            source = read_file(Path(path) if path else DATA_DIR / preset.path, parse, skip_bad_rows)
        self.source, self.held_out = source, held_out
        self.skipped_rows = 0
        for s in self._sources():
            self.skipped_rows += len(s.skipped)
            if s.skipped:
                jsonl.warn_skipped(s.where, s.skipped, SKIP_KEY)
        self.prompt_template = prompt_template or MATH_PROMPT
        self.system_prompt = system_prompt
        self.methods = EXTRACTION[extractor or "math"]
        self.eval_size = eval_size
        self.exclude_eval = exclude_eval
        self.for_training = for_training
        self._split()
        if self._repeats:
            n = len(self._repeats)
            shown = ", ".join(self.source.at(r) for r in self._repeats[:5]) + (" ..." if n > 5 else "")
            print(f"opo: warning: {self.source.where}: {n} training row{'s' * (n > 1)} repeat{'s' * (n == 1)} a "
                  f"held-out question and {'are' if n > 1 else 'is'} left out of training (task.exclude_eval): {shown}",
                  file=sys.stderr)
        if for_training:
            self._check_trainable()
        self.pool = GraderPool(grader_workers, grader_timeout)

    @property
    def rows(self) -> list[Row]:
        """The usable rows held-out ones are taken from (unless ``held_out`` is given) and training ones."""
        return self.source.rows

    @property
    def n_eval(self) -> int:
        held = (self.held_out or self.source).rows
        return len(held) if self.eval_size == 0 else min(self.eval_size, len(held))

    def _sources(self) -> list[Source]:
        return [self.source] + ([self.held_out] if self.held_out else [])

    def _split(self) -> None:
        """Held-out rows, training rows, and the rows left out of training for repeating a held-out question."""
        self._eval_rows = (self.held_out or self.source).rows[: self.n_eval]
        held = {question_key(r.question) for r in self._eval_rows} if self.exclude_eval else set()
        self._train_rows: list[Row] = []
        self._repeats: list[Row] = []
        for row in self.rows if self.held_out else self.rows[self.n_eval :]:
            (self._repeats if question_key(row.question) in held else self._train_rows).append(row)
        self.held_out_repeats = len(self._repeats)

    def _check_trainable(self) -> None:
        """ValueError with the user's numbers when the held-out split leaves no row to train on."""
        if self._train_rows:
            return
        if self.held_out:  # only repeats of held-out questions can leave nothing
            n = len(self.rows)
            raise ValueError(f"all {n} usable row{'s' * (n > 1)} of {self.source.where} repeat{'s' * (n == 1)} a "
                             f"question held out from {self.held_out.where} (task.exclude_eval): nothing is left "
                             "for training; set task.exclude_eval=false or train on another split")
        total, size = len(self.rows), f"task.eval_size={self.eval_size}" + (" (all rows)" if self.eval_size == 0 else "")
        rows = f"{total} usable row{'s' * (total != 1)} of {self.source.where}"
        if self.skipped_rows:
            rows += f" ({self.skipped_rows} more skipped)"
        if self.n_eval < total:
            raise ValueError(f"{size} holds out {self.n_eval} of the {rows} and the other {total - self.n_eval} "
                             "repeat held-out questions: nothing is left for training; lower task.eval_size or add "
                             "rows with new questions")
        fix = "add rows to the file" if total < 2 else f"set task.eval_size below {total}" if self.eval_size == 0 \
            else f"lower task.eval_size (below {total})"
        raise ValueError(f"{size} takes every one of the {rows}: nothing is left for training; {fix}")

    def _example(self, row: Row) -> Example:
        messages = prompt_messages(self.system_prompt, self.prompt_template, row.question)
        meta: dict[str, Any] = {k: row.fields[k] for k in self.breakdown if k in row.fields}
        meta["row"] = row.fields  # for task.reward_fn; a dict, so evaluation never groups by it
        return Example(messages, row.reference, meta)

    def eval_examples(self) -> list[Example]:
        return [self._example(r) for r in self._eval_rows]

    def train_example(self, index: int) -> Example:
        self._check_trainable()
        return self._example(self._train_rows[index % len(self._train_rows)])

    def limit_prompts(self, problem: Callable[[Example], Optional[str]]) -> None:
        """Check every row's prompt once: ``problem`` says what is wrong with one, or None."""
        bad = {}  # by the row object: rows of two sources share line numbers
        for source in self._sources():
            for row in source.rows:
                reason = problem(self._example(row))
                if reason is not None:
                    bad[id(row)] = f"{source.at(row)}: {reason}"
        if not bad:
            return
        if not self.skip_bad_rows:
            more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
            raise ValueError(f"{next(iter(bad.values()))}{more}; shorten the prompt, lower "
                             "max_new_tokens, or drop such rows with task.skip_bad_rows=true")
        self.skipped_rows += len(bad)
        jsonl.warn_skipped(self.source.where, list(bad.values()), SKIP_KEY)
        for source in self._sources():
            source.rows = [r for r in source.rows if id(r) not in bad]
            if not source.rows:
                raise ValueError(f"{source.title}: no row fits the model")
        self._split()  # the held-out split is over the kept rows
        if self.for_training:
            self._check_trainable()

    def answer(self, completion: str) -> Optional[str]:
        return extract_answer(completion, self.methods)[0]

    def grade(self, completions: list[str], examples: list[Example]) -> list[Graded]:
        extracted = [self.answer(c) for c in completions]
        grades = grade_math(self.pool, [(a, ex.reference) for a, ex in zip(extracted, examples)])
        return [Graded(a, float(g.correct), g.correct, g.status) for a, g in zip(extracted, grades)]

    def close(self) -> None:
        self.pool.close()
