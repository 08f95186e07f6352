"""Per-step metrics of a rollout batch and a JSONL writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def rollout_metrics(
    rewards: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor, finish: list[str]
) -> dict[str, float]:
    """Reward, accuracy, advantage and length statistics.

    rewards ``(N,)``, advantages and mask ``(N, T)``, group_ids ``(N,)``.
    """
    lengths = mask.sum(-1)  # (N,)
    tok_adv = advantages[mask.bool()]
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    gmax = torch.full((n_groups,), -float("inf")).scatter_reduce(0, inverse, rewards, "amax")
    gmin = torch.full((n_groups,), float("inf")).scatter_reduce(0, inverse, rewards, "amin")
    return {
        "reward/mean": float(rewards.mean()),
        "reward/accuracy": float((rewards >= 1.0).float().mean()),
        "adv/mean": float(tok_adv.mean()),
        "adv/std": float(tok_adv.std()) if tok_adv.numel() > 1 else 0.0,
        "groups/all_equal": float((gmax == gmin).float().mean()),
        "length/mean": float(lengths.mean()),
        "length/max": float(lengths.max()),
        "length/truncated": sum(f == "length" for f in finish) / len(finish),
    }


class JsonlLogger:
    """Appends one JSON object per line to ``path``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def log(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
