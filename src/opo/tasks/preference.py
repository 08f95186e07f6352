"""Training a judge (RRM, Guo et al. 2025, arXiv 2505.14674, Sec. 3.2): preference pairs whose
verifiable reward is +1 when the judge picks the preferred response and -1 otherwise (no verdict
included).

Rows are JSONL objects ``{"query": ..., "chosen": ..., "rejected": ...}``. Each example shows the
pair in the judge prompt (:func:`opo.judges.verdict.judge_messages`) with the chosen response as
Assistant 1 or 2. With ``pair_orders="both"`` training positions come in twos: positions 2i and
2i + 1 show the same pair in both orders (which comes first is drawn per pair and pass, so a
resumed run draws the same), so a step of an even number of prompts holds each pair once in each
order and the gradient towards a position cancels; only telling the responses apart pays. With
``"random"`` each training position draws its own order (a 135M judge trained so drifted to always
naming one position, docs/judges.md). Held-out rows get one order each, drawn once. ``metadata["chosen_shown"]`` says which, so evaluation reports accuracy per
position: the judge's position bias.
"""

from __future__ import annotations

import random
from typing import Optional

from opo.jsonl import BadRow
from opo.judges.verdict import DEFAULT_TEMPLATE, judge_messages, parse_verdict
from opo.tasks.base import Example, Graded
from opo.tasks.math import MathTask, Row

FIELDS = ("query", "chosen", "rejected")


def parse_pair(fields: dict, line: int) -> Row:
    for name in FIELDS:
        value = fields.get(name)
        if not isinstance(value, str) or not value.strip():
            raise BadRow(f"field '{name}' is missing, empty or not a string")
    if fields["chosen"] == fields["rejected"]:
        raise BadRow("'chosen' and 'rejected' are the same text")
    return Row(line, fields["query"], "", fields)


class PreferenceTask(MathTask):
    """Held-out set = the first ``eval_size`` pairs; training cycles through the rest (pairs whose
    query is a held-out one are left out with ``exclude_eval``); bad rows as in :class:`MathTask`."""

    def __init__(self, path: Optional[str], template: Optional[str], system_prompt: Optional[str], seed: int,
                 eval_seed: int, eval_size: int, skip_bad_rows: bool = False, exclude_eval: bool = True,
                 for_training: bool = False, pair_orders: str = "both") -> None:
        if not path:
            raise ValueError("task.name=preference needs task.data_path: a JSONL file of "
                             '{"query": ..., "chosen": ..., "rejected": ...} rows')
        self.template = template or DEFAULT_TEMPLATE
        self.seed, self.eval_seed, self.pair_orders = seed, eval_seed, pair_orders
        super().__init__("preference", path, None, None, None, None, system_prompt, None, eval_size,
                         grader_workers=1, skip_bad_rows=skip_bad_rows, exclude_eval=exclude_eval,
                         for_training=for_training, parse=parse_pair)

    def _pair(self, row: Row, chosen_first: bool) -> Example:
        q, c, r = (row.fields[k] for k in FIELDS)
        first, second = (c, r) if chosen_first else (r, c)
        shown = "1" if chosen_first else "2"
        return Example(judge_messages(q, first, second, self.template, self.system_prompt), shown,
                       {"chosen_shown": shown, "row": row.fields})

    def _example(self, row: Row) -> Example:  # held-out rows, and the prompt-length check
        return self._pair(row, random.Random(f"{self.eval_seed}:{row.line}").random() < 0.5)

    def train_example(self, index: int) -> Example:
        self._check_trainable()
        if self.pair_orders == "random":
            row = self._train_rows[index % len(self._train_rows)]
            return self._pair(row, random.Random(f"{self.seed}:{index}").random() < 0.5)
        pair = index // 2
        row = self._train_rows[pair % len(self._train_rows)]
        first = random.Random(f"{self.seed}:{pair}").random() < 0.5
        return self._pair(row, first if index % 2 == 0 else not first)

    def answer(self, completion: str) -> Optional[str]:
        choice, _ = parse_verdict(completion)
        return None if choice is None else str(choice)

    def grade(self, completions: list[str], examples: list[Example]) -> list[Graded]:
        out = []
        for c, ex in zip(completions, examples):
            a = self.answer(c)
            right = a == ex.reference
            out.append(Graded(a, 1.0 if right else -1.0, right, "ok" if a is not None else "no_answer"))
        return out
