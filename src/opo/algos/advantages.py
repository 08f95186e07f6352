"""Advantage estimators: pure tensor functions in a registry.

Every estimator has the signature

    fn(scores, mask, group_ids, **params) -> advantages

with ``scores`` the sequence-level rewards ``(N,)``, ``mask`` the response mask ``(N, T)`` (1 on
response tokens), ``group_ids`` ``(N,)`` integers naming the prompt each response answers, and
returns token-level advantages ``(N, T)`` that are zero outside the mask. Per-sample extras
(HGPO's thinking ``modes`` ``(N,)`` and mode ``tag_mask`` ``(N, T)``) are keyword-only parameters
of the estimators that need them; the trainer passes exactly those (:func:`extras_for`).

Names that also exist in verl's ``trainer/ppo/core_algos.py`` (opo, grpo, rloo, reinforce_pp,
reinforce_pp_baseline) reproduce its numbers, including its handling of a group of size 1: the
group baseline is 0 there (the advantage is the raw score) and GRPO's std is 1.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from opo.registry import Registry

AdvantageFn = Callable[..., torch.Tensor]

# Per-sample extras an estimator may declare as keyword-only parameters (HGPO's thinking modes).
EXTRAS = ("modes", "tag_mask")


def declared_extras(fn: AdvantageFn) -> list[str]:
    """The per-sample extras ``fn`` takes."""
    return [name for name in EXTRAS if name in inspect.signature(fn).parameters]


def extras_for(fn: AdvantageFn, available: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-sample extras ``fn`` declares, taken from ``available``; a declared one that is missing
    is an error naming what the estimator needs."""
    wanted = declared_extras(fn)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ValueError(f"advantage estimator {fn.__name__} needs {', '.join(missing)}: "
                         "sample both thinking modes (hybrid.enabled=true)")
    return {name: available[name] for name in wanted}


def _probe(fn: AdvantageFn, params: dict) -> torch.Tensor:
    """Run a member on a group of two (one response per thinking mode, the tag first), so bad
    algo.advantage_params fail before the model loads."""
    extras = {"modes": torch.tensor([1, 0]), "tag_mask": torch.tensor([[1.0, 0.0], [1.0, 0.0]])}
    return fn(torch.tensor([0.0, 1.0]), torch.ones(2, 2), torch.zeros(2, dtype=torch.long),
              **extras_for(fn, extras), **params)


ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator", probe=_probe)


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


# --- Hybrid thinking (HGPO, Jiang et al. 2025, arXiv 2505.14631, Sec. 3.2) ---------------------------
# Every prompt's group holds responses in both modes (``modes``: 1 thinking, 0 not), each starting
# with its mode tag token (``tag_mask``). Two binary rewards come from the verifiable scores:
# inter-group (which mode wins, given to every response of the winning mode) and intra-group (which
# response is best within its own mode's half). Every token learns from the intra reward; the tag
# token, where the model chooses its mode, also learns from the inter reward.


def hgpo_rewards(scores: torch.Tensor, group_ids: torch.Tensor, modes: torch.Tensor, margin: float = 0.2
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inter- and intra-group rewards ``(N,)`` each (arXiv 2505.14631, Eq. 9).

    Inter: 1 for every response of the winning mode, where thinking wins iff
    mean(thinking scores) > mean(non-thinking scores) + ``margin``; a tie goes to not thinking.
    Intra: 1 for each response at its mode half's maximum score (ties: all of them), else 0.
    """
    inverse, g = _groups(group_ids)
    think = (modes == 1).to(scores.dtype)  # (N,)
    n_think = _group_sum(think, inverse, g)
    n_no = _group_sum(1 - think, inverse, g)
    if bool((n_think == 0).any() or (n_no == 0).any()):
        raise ValueError("HGPO needs both thinking modes in every prompt's group (modes 1 and 0)")
    r_think = _group_sum(scores * think, inverse, g) / n_think  # (N,) mean reward of each group's halves
    r_no = _group_sum(scores * (1 - think), inverse, g) / n_no
    think_wins = r_think > r_no + margin
    inter = (think.bool() == think_wins).to(scores.dtype)
    half = inverse * 2 + (modes == 1).long()  # (N,) index of (group, mode)
    half_max = torch.full((2 * g,), -torch.inf, dtype=scores.dtype).scatter_reduce(0, half, scores, "amax")
    intra = (scores >= half_max[half]).to(scores.dtype)
    return inter, intra


def _hgpo_check(mask: torch.Tensor, tag_mask: torch.Tensor, alpha: float, margin: float) -> None:
    if tag_mask.shape != mask.shape:
        raise ValueError(f"tag_mask {tuple(tag_mask.shape)} must have the response mask's shape {tuple(mask.shape)}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")


@ADVANTAGES.register("hgpo")
def hgpo(scores: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor, *, modes: torch.Tensor,
         tag_mask: torch.Tensor, alpha: float = 1.0, margin: float = 0.2, epsilon: float = 1e-6) -> torch.Tensor:
    """HGPO, GRPO form (arXiv 2505.14631, Eq. 10): A_t = norm(r_intra) + alpha * 1[t is the tag] * norm(r_inter).

    norm(r) = (r - mean_g) / (std_g + epsilon) over the prompt's whole group of N (both modes),
    unbiased std as ``grpo``. ``modes`` ``(N,)``: 1 thinking, 0 not; ``tag_mask`` ``(N, T)``: 1 on
    the mode tag token. alpha = 0 drops the mode signal; ``margin`` favours not thinking.
    """
    _hgpo_check(mask, tag_mask, alpha, margin)
    inter, intra = hgpo_rewards(scores, group_ids, modes, margin)
    mean, std = _group_mean_std(intra, group_ids)
    intra_adv = (intra - mean) / (std + epsilon)  # (N,)
    mean, std = _group_mean_std(inter, group_ids)
    inter_adv = (inter - mean) / (std + epsilon)
    return _broadcast(intra_adv, mask) + alpha * _broadcast(inter_adv, tag_mask * mask)


@ADVANTAGES.register("hgpo_opo")
def hgpo_opo(scores: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor, *, modes: torch.Tensor,
             tag_mask: torch.Tensor, alpha: float = 1.0, margin: float = 0.2) -> torch.Tensor:
    """HGPO with OPO baselines (not in the paper): every token gets r_intra minus the group's
    length-weighted mean of r_intra (``opo``, arXiv 2505.23585, Eq. 6); the tag token also gets
    alpha * (r_inter - group mean of r_inter), the optimal baseline of a one-token term. No std division.
    """
    _hgpo_check(mask, tag_mask, alpha, margin)
    inter, intra = hgpo_rewards(scores, group_ids, modes, margin)
    intra_adv = opo(intra, mask, group_ids)  # (N, T)
    inter_adv = dr_grpo(inter, tag_mask * mask, group_ids)  # (N, T), nonzero on the tag only
    return intra_adv + alpha * inter_adv
