"""Chat conversations for supervised fine-tuning: read and check a JSONL file, tokenise each
conversation with the tokenizer's chat template, mark the tokens the loss trains on (every
assistant message and its end-of-turn token), and cut the rows into length-sorted batches.

An assistant message's tokens are found by rendering the conversation up to it with the generation
prompt and up to and including it: the second must extend the first, and both must be prefixes of
the whole conversation. The trained span is what the message added, up to and including its last
end-of-turn token (the tokenizer's eos, ``<|im_end|>`` for the embedded model), so the model learns
to stop; template glue after it (a newline) is never generated and is not trained.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opo import jsonl
from opo.config import SftDataConfig
from opo.jsonl import BadRow

ROLES = ("system", "user", "assistant", "tool")
SKIP_KEY = "data.skip_bad_rows"


class TemplateError(ValueError):
    """The chat template rewrites earlier turns, so assistant tokens cannot be located: a property
    of the template, not of a row, so it is never skipped."""


@dataclass
class Conversation:
    """One usable row: where it is, its token ids ``(L,)`` and which of them are trained ``(L,)``."""

    line: int
    ids: torch.Tensor
    trained: torch.Tensor
    n_trained: int

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class SftData:
    train: list[Conversation]
    eval: list[Conversation]
    skipped: int  # rows left out by data.skip_bad_rows, both files


def check_messages(fields: dict) -> list[dict[str, str]]:
    """The row's chat messages (role and content only); BadRow says what is wrong."""
    messages = fields.get("messages")
    if messages is None:
        raise BadRow("no 'messages' field")
    if not isinstance(messages, list) or not messages:
        raise BadRow("'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRow(f"messages[{i}] is not an object")
        if m.get("role") not in ROLES:
            raise BadRow(f"messages[{i}]: role {m.get('role')!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise BadRow(f"messages[{i}]: content must be text, got {type(m.get('content')).__name__}")
    if messages[0]["role"] == "assistant":
        raise BadRow("messages[0] is an assistant message: nothing precedes it to answer")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("no assistant message: nothing to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _render(tok: Any, messages: list[dict[str, str]], prompt: bool) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def assistant_mask(tok: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Token ids of the whole conversation and, per token, whether the loss trains on it."""
    ids = _render(tok, messages, prompt=False)
    trained = [False] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, through = _render(tok, messages[:i], prompt=True), _render(tok, messages[: i + 1], prompt=False)
        if through[: len(before)] != before or ids[: len(through)] != through:
            raise TemplateError(
                f"the chat template does not render messages[{i}] (assistant) as an extension of the conversation "
                "before it, or rewrites it once later turns follow (e.g. it drops earlier reasoning), so its tokens "
                "cannot be located; use a model whose template renders each turn once, or one turn per row")
        span = through[len(before):]
        first = tok.encode(m["content"], add_special_tokens=False)[:1]
        if first and first[0] in tok.all_special_ids and span[:1] != first:  # e.g. a mode tag must come first
            raise TemplateError(f"the chat template puts other tokens before the special token that opens messages[{i}] "
                                f"(assistant), e.g. an empty reasoning block: '{tok.decode(span[:8])}...'; the response "
                                "would not start with its own first token")
        ends = [j for j, t in enumerate(span) if t == tok.eos_token_id]
        end = len(before) + (ends[-1] + 1 if ends else len(span))
        if end == len(before):
            raise TemplateError(f"the chat template renders messages[{i}] (assistant) as no tokens")
        trained[len(before):end] = [True] * (end - len(before))
    trained[0] = False  # nothing predicts the first token
    return ids, trained


def _conversation(fields: dict, line: int, tok: Any, max_length: int) -> Conversation:
    ids, trained = assistant_mask(tok, check_messages(fields))
    if len(ids) > max_length:
        raise BadRow(f"conversation of {len(ids)} tokens is longer than data.max_length={max_length}")
    mask = torch.tensor(trained)
    return Conversation(line, torch.tensor(ids, dtype=torch.int32), mask, int(mask.sum()))


def load_conversations(path: str, tok: Any, max_length: int, skip_bad: bool,
                       key: str) -> tuple[list[Conversation], int]:
    """The usable conversations of the JSONL file ``path`` (``key``: its setting, for messages) and
    how many rows were left out: a bad row raises ValueError naming file and line, or with
    ``skip_bad`` is left out with a warning."""
    def parse(fields: dict, line: int) -> Conversation:
        try:
            return _conversation(fields, line, tok, max_length)
        except TemplateError as e:
            raise TemplateError(f"{path}:{line}: {e}") from None

    rows, skipped = jsonl.read_rows(Path(path), parse, skip_bad, SKIP_KEY, key)
    if skipped:
        jsonl.warn_skipped(Path(path), skipped, SKIP_KEY)
    return rows, len(skipped)


def load_data(cfg: SftDataConfig, tok: Any, seed: int) -> SftData:
    """Training and held-out conversations: ``data.eval_path``'s, or ``data.eval_size`` rows of
    ``data.path`` drawn with ``seed`` (a file is often sorted, so not its first rows)."""
    rows, skipped = load_conversations(cfg.path, tok, cfg.max_length, cfg.skip_bad_rows, "data.path")
    if cfg.eval_path:
        held, more = load_conversations(cfg.eval_path, tok, cfg.max_length, cfg.skip_bad_rows, "data.eval_path")
        return SftData(rows, held, skipped + more)
    if cfg.eval_size >= len(rows):
        raise ValueError(f"data.eval_size={cfg.eval_size} holds out all {len(rows)} usable rows of {cfg.path}: nothing "
                         "is left for training; lower data.eval_size or give a separate data.eval_path")
    picked = set(random.Random(seed).sample(range(len(rows)), cfg.eval_size))
    return SftData([r for i, r in enumerate(rows) if i not in picked], [r for i, r in enumerate(rows) if i in picked],
                   skipped)


def plan_epoch(lengths: list[int], batch_tokens: int, window: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's optimizer batches (row indices): the rows shuffled, sorted by length within
    windows of ``window`` rows, cut into batches of at most ``batch_tokens`` tokens (a longer row
    is a batch of its own), and the batches shuffled. A pure function of its arguments, so a
    resumed run plans every epoch as the interrupted one did."""
    rng = random.Random(f"sft-epoch:{seed}:{epoch}")  # str seeds hash the same in every process
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        current: list[int] = []
        used = 0
        for i in sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True):
            if current and used + lengths[i] > batch_tokens:
                batches.append(current)
                current, used = [], 0
            current.append(i)
            used += lengths[i]
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(convs: list[Conversation], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded token ids, attention mask and trained mask, each ``(B, W)``."""
    width = max(len(c) for c in convs)
    ids = torch.full((len(convs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(convs), width), dtype=torch.long)
    trained = torch.zeros((len(convs), width), dtype=torch.bool)
    for b, c in enumerate(convs):
        ids[b, : len(c)] = c.ids
        attention[b, : len(c)] = 1
        trained[b, : len(c)] = c.trained
    return ids, attention, trained
