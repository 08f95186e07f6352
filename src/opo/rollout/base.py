"""The rollout contract shared by every engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import torch


@dataclass
class Rollout:
    """One sampled completion.

    ``logprobs`` are the sampler's per-token log-probs of ``completion`` (same length);
    ``finish`` is ``"stop"`` (an end token was sampled, and is part of ``completion``) or
    ``"length"`` (``max_new_tokens`` reached). ``group`` names the prompt; ``meta`` holds what
    methods need besides: ``forced``, the number of leading tokens that were forced, not drawn
    (HGPO's mode tag).
    """

    prompt: list[int]
    completion: list[int]
    logprobs: list[float]
    finish: str
    group: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutBatch:
    """Rollouts of one step, grouped by prompt, with the tensors the trainer needs."""

    rollouts: list[Rollout]

    def __len__(self) -> int:
        return len(self.rollouts)

    def prompts(self) -> tuple[list[list[int]], torch.Tensor]:
        """Distinct prompts in group order and each rollout's row among them ``(N,)``."""
        rows: dict[int, int] = {}
        prompts: list[list[int]] = []
        index = []
        for r in self.rollouts:
            if r.group not in rows:
                rows[r.group] = len(prompts)
                prompts.append(r.prompt)
            index.append(rows[r.group])
        return prompts, torch.tensor(index, dtype=torch.long)

    def completion_tensors(self, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded completion ids, response mask and sampler log-probs, each ``(N, T)``."""
        width = max(len(r.completion) for r in self.rollouts)
        ids = torch.full((len(self), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(self), width), dtype=torch.float32)
        logps = torch.zeros((len(self), width), dtype=torch.float32)
        for i, r in enumerate(self.rollouts):
            n = len(r.completion)
            ids[i, :n] = torch.tensor(r.completion, dtype=torch.long)
            mask[i, :n] = 1.0
            logps[i, :n] = torch.tensor(r.logprobs, dtype=torch.float32)
        return ids, mask, logps

    def group_ids(self) -> torch.Tensor:
        return torch.tensor([r.group for r in self.rollouts], dtype=torch.long)  # (N,)


class Engine(Protocol):
    """Anything that samples completions from the current policy weights."""

    def generate(
        self, prompts: list[list[int]], groups: list[int], samples: int, max_new_tokens: int, temperature: float,
        prefixes: Optional[list[list[int]]] = None,
    ) -> RolloutBatch:
        """``samples`` completions per prompt; ``prefixes`` (one per completion, prompt-major): forced
        first tokens, which belong to the completion but were not drawn (``meta["forced"]`` counts them)."""
        ...

    def sync_weights(self) -> None:
        """Make the next rollouts use the policy's current weights (called after every optimizer step)."""
        ...

    def offload(self) -> None:
        """Free the accelerator memory the engine holds for the update (called before it)."""
        ...

    def close(self) -> None:
        """Release what the engine holds (temporary files, a server)."""
        ...
