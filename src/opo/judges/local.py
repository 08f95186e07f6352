"""A judge sampled by opo's own engine from a local transformers model, in batches."""

from __future__ import annotations

from typing import Any

from opo.judges.base import Judgment
from opo.judges.verdict import DEFAULT_TEMPLATE, judge_messages, parse_verdict
from opo.rollout.base import Engine
from opo.tasks.base import Example
from opo.tasks.chat import decode, encode


class LocalJudge:
    """Judges with ``engine`` (its model's current weights): ``batch_size`` prompts per generation
    call, ``temperature`` 0 for greedy verdicts. A verdict cut off at ``max_new_tokens`` has no box:
    ``no_verdict``."""

    def __init__(self, name: str, engine: Engine, tokenizer: Any, *, max_new_tokens: int = 256,
                 temperature: float = 0.6, batch_size: int = 32, template: str = DEFAULT_TEMPLATE,
                 system_prompt: str | None = None) -> None:
        self.name = f"local:{name}"
        self.engine, self.tok = engine, tokenizer
        self.max_new_tokens, self.temperature, self.batch_size = max_new_tokens, temperature, batch_size
        self.template, self.system_prompt = template, system_prompt

    def reseed(self, value: int) -> None:
        self.engine.generator.manual_seed(value % 2**63)

    def judge(self, items: list[tuple[str, str, str]]) -> list[Judgment]:
        out: list[Judgment] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            prompts = encode(self.tok, [Example(judge_messages(q, a, b, self.template, self.system_prompt), "")
                                        for q, a, b in chunk])
            batch = self.engine.generate(prompts, list(range(len(chunk))), 1, self.max_new_tokens, self.temperature)
            for r in sorted(batch.rollouts, key=lambda r: r.group):
                text = decode(self.tok, r.completion)
                choice, status = parse_verdict(text)
                out.append(Judgment(choice, text, status))
        return out
