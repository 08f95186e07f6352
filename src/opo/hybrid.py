"""Hybrid thinking (Jiang et al. 2025, "Think Only When You Need with Large Hybrid-Reasoning Models",
arXiv 2505.14631): the two response formats, the mode tag tokens, and what a response's mode is.

Thinking: ``<think> reasoning </think> answer``. Not thinking: ``<no_think> answer </no_think>``.
Each tag is one token (added by ``opo sft sft.add_tokens=...``), so the first token of a response
is the model's choice of mode, the one token HGPO's inter-group reward trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from opo.algos.advantages import hgpo_rewards
from opo.config import HybridConfig
from opo.rollout.base import RolloutBatch
from opo.tasks.base import Example
from opo.tasks.chat import decode

THINK, NO_THINK = 1, 0  # the values of ``modes`` (N,)
MODE_NAMES = {THINK: "think", NO_THINK: "no_think"}


def thinking_response(h: HybridConfig, reasoning: str, answer: str) -> str:
    """The thinking format: the tag, the reasoning, the end tag, then the answer."""
    return f"{h.think_tag}\n{reasoning.strip()}\n{h.think_end}\n\n{answer.strip()}"


def direct_response(h: HybridConfig, answer: str) -> str:
    """The non-thinking format: the whole answer inside the no-think tags."""
    return f"{h.no_think_tag}{answer.strip()}{h.no_think_end}"


@dataclass(frozen=True)
class ModeTokens:
    """Token ids of the four tags in one tokenizer."""

    think: int
    think_end: int
    no_think: int
    no_think_end: int

    @classmethod
    def of(cls, tokenizer: Any, h: HybridConfig) -> "ModeTokens":
        """The tags' ids; each must be a single token of ``tokenizer`` (a ValueError says which is not)."""
        ids = []
        vocab = tokenizer.get_vocab()
        for key in ("think_tag", "think_end", "no_think_tag", "no_think_end"):
            tag = getattr(h, key)
            if tag not in vocab:  # looked up as a token, not encoded: some tokenizers prepend a space piece
                pieces = len(tokenizer.encode(tag, add_special_tokens=False))
                raise ValueError(f"hybrid.{key}='{tag}' is {pieces} tokens in this model's tokenizer, not one: "
                                 "start from a model trained with the tags added as tokens (opo sft with "
                                 "sft.add_tokens, docs/hybrid.md)")
            ids.append(vocab[tag])
        return cls(*ids)

    def prefixes(self, prompts: int, samples: int) -> list[list[int]]:
        """Forced starts for ``samples`` completions of each prompt: the first half thinks, the second does not."""
        half = samples // 2
        return [[self.think] if j < half else [self.no_think] for _ in range(prompts) for j in range(samples)]

    def mode_of(self, completion: list[int]) -> Optional[int]:
        """THINK or NO_THINK by the completion's first token; None when it opens with neither tag."""
        if completion and completion[0] == self.think:
            return THINK
        if completion and completion[0] == self.no_think:
            return NO_THINK
        return None

    def answer_tokens(self, completion: list[int]) -> list[int]:
        """The part of a completion that holds its answer: after the think end tag when thinking,
        inside the no-think tags when not (nothing when the end tag is missing: the format is part
        of the answer), else all of it."""
        mode = self.mode_of(completion)
        if mode == THINK:
            return completion[completion.index(self.think_end) + 1:] if self.think_end in completion else []
        if mode == NO_THINK:
            return completion[1:completion.index(self.no_think_end)] if self.no_think_end in completion else []
        return completion

    def answer_text(self, tokenizer: Any, completion: list[int]) -> str:
        """What the task grades: the decoded answer part of ``completion``."""
        return decode(tokenizer, self.answer_tokens(completion))


def shown_text(tokenizer: Any, completion: list[int]) -> str:
    """A hybrid response as logged: the tags kept, so a reader sees where the thinking ends."""
    return tokenizer.decode(completion, skip_special_tokens=False)


def hybrid_extras(modes: ModeTokens, batch: RolloutBatch, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """HGPO's per-sample inputs of a batch sampled with forced mode tags: ``modes`` ``(N,)`` and
    ``tag_mask`` ``(N, T)`` (1 on the last forced token, the tag)."""
    chosen = [modes.mode_of(r.completion) for r in batch.rollouts]
    if None in chosen or any(not r.meta.get("forced") for r in batch.rollouts):
        raise ValueError("hybrid: every rollout must start with its forced mode tag")
    tag_mask = torch.zeros_like(mask)  # (N, T)
    for i, r in enumerate(batch.rollouts):
        tag_mask[i, r.meta["forced"] - 1] = 1.0
    return {"modes": torch.tensor(chosen, dtype=torch.long), "tag_mask": tag_mask}


def mode_metrics(rewards: torch.Tensor, mask: torch.Tensor, batch: RolloutBatch, modes: torch.Tensor, margin: float
                 ) -> dict[str, float]:
    """Per step: reward and length per mode, the share of prompts whose inter-group reward picks
    thinking (at ``margin``), and the policy's probability of each tag where it was forced."""
    think = modes == THINK  # (N,)
    inter, _ = hgpo_rewards(rewards, batch.group_ids(), modes, margin)
    lengths = mask.sum(-1)  # (N,)
    tag_p = torch.tensor([math.exp(r.logprobs[r.meta["forced"] - 1]) for r in batch.rollouts])  # (N,)
    return {"mode/think_wins": float(inter[think].mean()),
            "mode/reward_think": float(rewards[think].mean()), "mode/reward_no_think": float(rewards[~think].mean()),
            "mode/length_think": float(lengths[think].mean()), "mode/length_no_think": float(lengths[~think].mean()),
            "mode/p_think": float(tag_p[think].mean()), "mode/p_no_think": float(tag_p[~think].mean())}


def difficulty(example: Example) -> dict[str, Any]:
    """What makes a problem hard, for the row's metadata and the summary's breakdown: a reasoning-gym
    item's difficulty keys with this item's values (chain_sum: num_terms, num_digits); else the
    example's scalar metadata (math500: subject, level)."""
    entry = example.metadata.get("entry")
    if isinstance(entry, dict) and isinstance(entry.get("metadata"), dict):
        meta = entry["metadata"]
        keys = meta["difficulty"] if isinstance(meta.get("difficulty"), dict) else meta
        return {k: meta[k] for k in keys if k in meta and _scalar(meta[k]) and not k.startswith("source_")}
    return {k: v for k, v in example.metadata.items() if _scalar(v)}


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float))
