"""Held-out evaluation during training: greedy accuracy on the task's fixed held-out set."""

from __future__ import annotations

from typing import Any

from opo.rollout.base import Engine
from opo.tasks.base import Example, Task


def encode(tokenizer: Any, examples: list[Example]) -> list[list[int]]:
    """Chat-template token ids of each example's prompt, ready for generation."""
    out = []
    for ex in examples:
        ids = tokenizer.apply_chat_template(ex.messages, add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def decode(tokenizer: Any, completion: list[int]) -> str:
    return tokenizer.decode(completion, skip_special_tokens=True)


def heldout_accuracy(
    engine: Engine, tokenizer: Any, task: Task, max_new_tokens: int, batch_size: int = 128
) -> dict[str, float]:
    """Greedy accuracy, mean completion length and truncation rate on the held-out set."""
    examples = task.eval_examples()
    prompts = encode(tokenizer, examples)
    correct = lengths = truncated = 0
    for start in range(0, len(examples), batch_size):
        chunk = list(range(start, min(start + batch_size, len(examples))))
        batch = engine.generate([prompts[i] for i in chunk], chunk, 1, max_new_tokens, 0.0)
        for r in batch.rollouts:
            correct += task.score(decode(tokenizer, r.completion), examples[r.group]) >= 1.0
            lengths += len(r.completion)
            truncated += r.finish == "length"
    n = len(examples)
    return {"eval/accuracy": correct / n, "eval/length": lengths / n, "eval/truncated": truncated / n, "eval/n": float(n)}
