"""Math word problems from JSONL: GSM8K, MATH-500, AIME/AMC-style files, or any user file.

Rows are read eagerly and checked: a bad row is reported with file, line and field. Answers are
graded by :mod:`opo.rewards.grader` (number fast path, math-verify under a hard timeout).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from opo.rewards.grader import GraderPool, extract_answer, extract_gsm8k
from opo.tasks.base import Example, Graded

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
MATH_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


@dataclass(frozen=True)
class Preset:
    path: str
    question_field: str
    answer_field: str
    answer_format: str  # "plain": the field is the answer; "gsm8k": the answer follows '#### '
    breakdown: tuple[str, ...] = ()


PRESETS = {
    "gsm8k": Preset("gsm8k_test.jsonl", "question", "answer", "gsm8k"),
    "math500": Preset("math500.jsonl", "problem", "answer", "plain", ("subject", "level")),
}
EXTRACTION = {"math": ("boxed", "gsm8k", "last_number"), "boxed": ("boxed",)}


def load_rows(path: Path, question_field: str, answer_field: str, answer_format: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file with non-empty question and answer; errors name file, line and field."""
    if not path.is_file():
        raise ValueError(f"task data file '{path}' does not exist")
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            for field in (question_field, answer_field):
                value = row.get(field)
                if value is None or not str(value).strip():
                    raise ValueError(f"{path}:{lineno}: field '{field}' is missing or empty")
            answer = str(row[answer_field])
            if answer_format == "gsm8k":
                answer = extract_gsm8k(answer)
                if answer is None:
                    raise ValueError(f"{path}:{lineno}: field '{answer_field}' has no '#### <answer>' line")
            row["_reference"] = answer.strip()
            rows.append(row)
    if not rows:
        raise ValueError(f"task data file '{path}' holds no rows")
    return rows


class MathTask:
    """Held-out set = the first ``eval_size`` rows (0: all); training cycles through the others."""

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
    ) -> None:
        preset = PRESETS.get(name, Preset("", "question", "answer", "plain"))
        self.name = name
        self.path = Path(path) if path else DATA_DIR / preset.path
        self.breakdown = preset.breakdown
        self.question_field = question_field or preset.question_field
        self.rows = load_rows(self.path, self.question_field, answer_field or preset.answer_field,
                              answer_format or preset.answer_format)
        self.prompt_template = prompt_template or MATH_PROMPT
        self.system_prompt = system_prompt
        self.methods = EXTRACTION[extractor or "math"]
        self.n_eval = len(self.rows) if eval_size == 0 else min(eval_size, len(self.rows))
        self.pool = GraderPool(grader_workers, grader_timeout)

    def _example(self, row: dict[str, Any]) -> Example:
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": self.prompt_template.format(question=row[self.question_field])})
        meta = {k: row[k] for k in self.breakdown if k in row}
        return Example(messages, row["_reference"], meta)

    def eval_examples(self) -> list[Example]:
        return [self._example(r) for r in self.rows[: self.n_eval]]

    def train_example(self, index: int) -> Example:
        train = self.rows[self.n_eval :]
        if not train:
            raise ValueError(f"task '{self.name}': every row is held out (task.eval_size={self.n_eval}); lower it")
        return self._example(train[index % len(train)])

    def grade(self, completions: list[str], examples: list[Example]) -> list[Graded]:
        extracted = [extract_answer(c, self.methods)[0] for c in completions]
        grades = self.pool.grade([(a, ex.reference) for a, ex in zip(extracted, examples)])
        return [Graded(a, float(g.correct), g.correct, g.status) for a, g in zip(extracted, grades)]

    def close(self) -> None:
        self.pool.close()
