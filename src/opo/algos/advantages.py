"""Advantage estimators: pure tensor functions in a registry.

Every estimator has the signature

    fn(scores, mask, group_ids, **params) -> advantages

with ``scores`` the sequence-level rewards ``(N,)``, ``mask`` the response mask ``(N, T)`` (1 on
response tokens), ``group_ids`` ``(N,)`` integers naming the prompt each response answers, and
returns token-level advantages ``(N, T)`` that are zero outside the mask.

Names that also exist in verl's ``trainer/ppo/core_algos.py`` (opo, grpo, rloo, reinforce_pp,
reinforce_pp_baseline) reproduce its numbers, including its handling of a group of size 1: the
group baseline is 0 there (the advantage is the raw score) and GRPO's std is 1.
"""

from __future__ import annotations

from typing import Callable

import torch

from opo.registry import Registry

AdvantageFn = Callable[..., torch.Tensor]
# the probe runs a member on a group of two, so bad algo.advantage_params fail before the model loads
ADVANTAGES: Registry[AdvantageFn] = Registry(
    "advantage estimator",
    probe=lambda fn, params: fn(torch.tensor([0.0, 1.0]), torch.ones(2, 1), torch.zeros(2, dtype=torch.long), **params))


def _groups(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Dense group index per sample ``(N,)`` and the number of groups."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(inverse.max().item()) + 1 if inverse.numel() else 0


def _group_sum(x: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per-group sums of ``x`` ``(N,)`` gathered back to each sample ``(N,)``."""
    sums = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
    return sums[inverse]


def _broadcast(seq_adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return seq_adv.unsqueeze(-1) * mask  # (N, T)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Whiten ``values`` ``(N, T)`` over masked entries with the unbiased variance, as verl's ``masked_whiten``.

    One deviation: with a single masked entry verl raises; the variance is undefined and we
    return zeros (no signal) instead.
    """
    m = mask.to(values.dtype)
    count = m.sum()
    mean = (values * m).sum() / count
    var = (((values - mean) ** 2) * m).sum() / count
    var = var * count / (count - 1).clamp(min=1)  # Bessel's correction
    return (values - mean) * torch.rsqrt(var + eps)


@ADVANTAGES.register("opo")
def opo(scores: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """OPO: length-weighted group baseline, no std division.

    b_g = sum_i l_i r_i / sum_i l_i over the group's responses, A_i = r_i - b_g
    (Hao et al. 2025, arXiv 2505.23585, Eq. 6: the optimal baseline when |grad log pi|^2 is
    proportional to the response length l). Hence sum_i l_i A_i = 0 within each group.
    Group of size 1: b = 0 (as verl).
    """
    inverse, g = _groups(group_ids)
    lengths = mask.sum(-1).to(scores.dtype)  # (N,)
    baseline = _group_sum(lengths * scores, inverse, g) / _group_sum(lengths, inverse, g).clamp(min=1e-12)
    size = _group_sum(torch.ones_like(scores), inverse, g)
    baseline = torch.where(size > 1, baseline, torch.zeros_like(baseline))
    return _broadcast(scores - baseline, mask)


@ADVANTAGES.register("opo_batch")
def opo_batch(scores: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """OPO's length-weighted baseline over the whole batch: b = sum_i l_i r_i / sum_i l_i.

    For batch-level (REINFORCE++-style) training where responses need not share a prompt
    (arXiv 2505.23585, Sec. 3). Not in verl.
    """
    lengths = mask.sum(-1).to(scores.dtype)  # (N,)
    baseline = (lengths * scores).sum() / lengths.sum().clamp(min=1e-12)
    return _broadcast(scores - baseline, mask)


def _group_mean_std(scores: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample group mean and unbiased group std ``(N,)``; size-1 groups get mean 0, std 1 (verl)."""
    inverse, g = _groups(group_ids)
    size = _group_sum(torch.ones_like(scores), inverse, g)
    mean = _group_sum(scores, inverse, g) / size
    var = _group_sum((scores - mean) ** 2, inverse, g) / (size - 1).clamp(min=1)
    single = size <= 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(var), var.sqrt())
    return mean, std


@ADVANTAGES.register("grpo")
def grpo(scores: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """GRPO: A_i = (r_i - mean_g) / (std_g + eps), unbiased std (Shao et al. 2024, arXiv 2402.03300, Sec. 4.1.2)."""
    mean, std = _group_mean_std(scores, group_ids)
    return _broadcast((scores - mean) / (std + epsilon), mask)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(scores: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: A_i = r_i - mean_g, no std division (Liu et al. 2025, arXiv 2503.20783, Sec. 3.2).

    verl spells this ``grpo`` with ``norm_adv_by_std_in_grpo=False``.
    """
    mean, _ = _group_mean_std(scores, group_ids)
    return _broadcast(scores - mean, mask)


@ADVANTAGES.register("rloo")
def rloo(scores: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO: A_i = r_i - mean_{j != i} r_j (Ahmadian et al. 2024, arXiv 2402.14740, Eq. 5). Size 1: A = r."""
    inverse, g = _groups(group_ids)
    size = _group_sum(torch.ones_like(scores), inverse, g)
    total = _group_sum(scores, inverse, g)
    loo_mean = (total - scores) / (size - 1).clamp(min=1)
    adv = torch.where(size > 1, scores - loo_mean, scores)
    return _broadcast(adv, mask)


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(
    scores: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """REINFORCE++: discounted return-to-go of the outcome reward, whitened over the batch.

    The score sits on each response's last token; G_t = r_t + gamma * G_{t+1}; advantages are
    the masked-whitened returns (Hu 2025, arXiv 2501.03262, Sec. 3). group_ids are unused.
    """
    m = mask.to(scores.dtype)
    last = (m.cumsum(-1) == m.sum(-1, keepdim=True)) & (m > 0)  # (N, T) last response token
    token_rewards = last.to(scores.dtype) * scores.unsqueeze(-1)  # (N, T)
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros_like(scores)
    for t in reversed(range(token_rewards.shape[1])):
        # Masked positions (padding, or tool output inside a multi-turn response) carry the return through.
        running = (token_rewards[:, t] + gamma * running) * m[:, t] + running * (1 - m[:, t])
        returns[:, t] = running
    return masked_whiten(returns, m) * m


@ADVANTAGES.register("reinforce_pp_baseline")
def reinforce_pp_baseline(scores: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """REINFORCE++ with a group-mean baseline, then whitened over the batch (arXiv 2501.03262, Sec. 3.3)."""
    mean, _ = _group_mean_std(scores, group_ids)
    m = mask.to(scores.dtype)
    return masked_whiten(_broadcast(scores - mean, m), m) * m
