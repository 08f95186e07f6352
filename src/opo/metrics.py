"""Per-step metrics of a rollout batch, repetition measures, pass@k and a JSONL writer."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from opo.errors import DiskFull, is_disk_full


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


def ngram_repetition(tokens: Sequence[Hashable], n: int = 4) -> float:
    """Fraction of a response's n-grams that repeat an earlier n-gram of the same response.

    ``1 - distinct / total`` over its ``len(tokens) - n + 1`` n-grams; 0 for a response shorter
    than ``n``. Works on token ids or on words.
    """
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def max_ngram_count(tokens: Sequence[Hashable], n: int = 4) -> int:
    """How often the response's most frequent n-gram occurs (0 for a response shorter than ``n``)."""
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return max(counts.values(), default=0)


def repetition_metrics(responses: Sequence[Sequence[Hashable]], n: int = 4, min_count: int = 3) -> dict[str, float]:
    """Batch means: repeated n-gram fraction, and the share of degenerate responses (some n-gram
    occurring at least ``min_count`` times)."""
    if not responses:
        return {"repetition/ngram_frac": 0.0, "repetition/degenerate": 0.0}
    return {
        "repetition/ngram_frac": sum(ngram_repetition(r, n) for r in responses) / len(responses),
        "repetition/degenerate": sum(max_ngram_count(r, n) >= min_count for r in responses) / len(responses),
    }


class JsonlLogger:
    """Appends one JSON object per line to ``path`` (mirrors to TensorBoard and W&B:
    :class:`opo.tracking.Tracker`)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def log(self, row: dict[str, Any]) -> None:
        """Append ``row`` as one line. A full disk raises :class:`opo.errors.DiskFull` and leaves
        the file as it was (no half-written line)."""
        data = (json.dumps(row) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as e:
                try:
                    os.ftruncate(fd, start)  # drop a partial line; frees what it took
                except OSError:
                    pass

                if is_disk_full(e):
                    raise DiskFull(
                        f"disk full while writing the row of step {row.get('step')} to {self.path}: the row is not "
                        "written and the file is left as it was; free space, then resume the run with "
                        "checkpoint.resume=true (it continues from its last checkpoint)"
                    ) from e
                raise
        finally:
            os.close(fd)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, Eq. 1)."""
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: need 0 <= c <= n, got n={n}, c={c}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    # Numerically stable product form of C(n-c, k) / C(n, k).
    ratio = 1.0
    for i in range(n - c + 1, n + 1):
        ratio *= 1.0 - k / i
    return 1.0 - ratio


def majority_vote(answers: list[Optional[str]], correct: list[bool]) -> bool:
    """maj@k: is the most frequent extracted answer correct? Ties go to the answer seen first.

    ``answers`` and ``correct`` are per sample; samples without an answer do not vote.
    """
    counts: dict[str, int] = {}
    first_correct: dict[str, bool] = {}
    for a, ok in zip(answers, correct):
        if a is None:
            continue
        key = a.strip()
        counts[key] = counts.get(key, 0) + 1
        first_correct.setdefault(key, ok)
    if not counts:
        return False
    best = max(counts.values())
    winner = next(a for a in counts if counts[a] == best)  # dicts keep first-seen order
    return first_correct[winner]
