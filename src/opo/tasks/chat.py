"""Between a task's chat messages and token ids: the prompt a model sees, the text it wrote."""

from __future__ import annotations

from typing import Any

from opo.tasks.base import Example


def encode(tokenizer: Any, examples: list[Example]) -> list[list[int]]:
    """Chat-template token ids of each example's prompt, ready for generation."""
    out = []
    for ex in examples:
        ids = tokenizer.apply_chat_template(ex.messages, add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def decode(tokenizer: Any, completion: list[int]) -> str:
    return tokenizer.decode(completion, skip_special_tokens=True)
