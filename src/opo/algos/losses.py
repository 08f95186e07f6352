"""Policy losses, KL estimators and loss aggregation: pure tensor functions in registries.

A policy loss has the signature

    fn(logp, old_logp, advantages, **params) -> (loss, clipped)

with per-token log-probs ``logp`` ``(N, T)`` (carrying gradient), ``old_logp`` ``(N, T)`` or None
(exact on-policy: the sampling policy *is* the current policy), advantages ``(N, T)``; it returns
the per-token loss ``(N, T)`` and a bool ``(N, T)`` marking tokens where clipping removed the
gradient. Aggregation over tokens is a separate step (:func:`aggregate`).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from opo.registry import Registry

PolicyLossFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
# the probe runs a member on one token, so bad algo.loss_params fail before the model loads
POLICY_LOSSES: Registry[PolicyLossFn] = Registry(
    "policy loss", probe=lambda fn, params: fn(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), **params))
KL_ESTIMATORS: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("KL estimator")
CorrectionFn = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
ROLLOUT_CORRECTIONS: Registry[CorrectionFn] = Registry("rollout correction")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def _ratio(logp: torch.Tensor, old_logp: Optional[torch.Tensor]) -> torch.Tensor:
    # With old_logp None the ratio is exp(logp - sg(logp)) == 1 in value, and its gradient is
    # grad log pi: exactly the on-policy policy gradient, with no extra forward pass.
    ref = logp.detach() if old_logp is None else old_logp
    return torch.exp(logp - ref)  # (N, T)


@POLICY_LOSSES.register("pg")
def policy_gradient(
    logp: torch.Tensor, old_logp: Optional[torch.Tensor], advantages: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE-style loss -A * pi/pi_old (Williams 1992; OPO uses it with pi_old = pi, arXiv 2505.23585 Eq. 2)."""
    loss = -advantages * _ratio(logp, old_logp)
    return loss, torch.zeros_like(loss, dtype=torch.bool)


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    logp: torch.Tensor,
    old_logp: Optional[torch.Tensor],
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate with decoupled bounds (clip-higher).

    L = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) (Schulman et al. 2017, arXiv 1707.06347
    Eq. 7; decoupled bounds from DAPO, arXiv 2503.14476 Eq. 10). With ``dual_clip`` = c > 1, losses
    of negative-advantage tokens are capped at -A c (Ye et al. 2020, arXiv 1912.09729).
    """
    if not (0 <= clip_low < 1 and 0 <= clip_high < 1):
        raise ValueError(f"clip_low and clip_high must be in [0, 1), got {clip_low} and {clip_high}")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 or null, got {dual_clip}")
    ratio = _ratio(logp, old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if dual_clip is not None:
        cap = -advantages * dual_clip
        capped = (advantages < 0) & (loss > cap)
        loss = torch.where(capped, cap, loss)
        was_clipped = was_clipped | capped
    return loss, was_clipped


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref: unbiased for KL(pi || ref), high variance (Schulman 2020, "Approximating KL")."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2: biased, low variance (Schulman 2020)."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1: unbiased, non-negative (Schulman 2020)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


@ROLLOUT_CORRECTIONS.register("tis")
def truncated_is(log_ratio: torch.Tensor, mask: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level truncated importance sampling: w_t = min(pi(y_t) / mu(y_t), C).

    ``log_ratio`` ``(N, T)`` is log pi - log mu (trainer minus sampler), ``mask`` ``(N, T)`` the
    response tokens; returns the weights ``(N, T)`` (no gradient) and the truncated tokens ``(N, T)``.
    Truncation bounds the variance at the cost of a bias (Ionides 2008; applied to sampler/trainer
    mismatch by Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training").
    """
    ratio = log_ratio.detach().exp()
    return ratio.clamp(max=threshold) * mask, (ratio > threshold) & mask.bool()


@ROLLOUT_CORRECTIONS.register("mis")
def masked_is(log_ratio: torch.Tensor, mask: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence-level masked importance sampling: w_i = rho_i 1[rho_i <= C], rho_i = prod_t pi(y_t) / mu(y_t).

    A sequence whose ratio exceeds ``threshold`` is left out of the gradient instead of being
    truncated (Liu et al. 2025, "When Speed Kills Stability: Demystifying RL Collapse from the
    Training-Inference Mismatch"); every token of a sequence gets its weight. Returns the weights
    ``(N, T)`` and the masked tokens ``(N, T)``.
    """
    m = mask.to(log_ratio.dtype)
    seq = (log_ratio.detach() * m).sum(-1, keepdim=True)  # (N, 1) log rho_i
    keep = seq <= math.log(threshold)  # (N, 1)
    return torch.where(keep, seq.exp(), torch.zeros_like(seq)) * m, ~keep & mask.bool()


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str, n_tokens: float, n_seqs: float) -> torch.Tensor:
    """Reduce a per-token loss ``(n, T)`` of one micro-batch to a scalar.

    The normalisers are those of the *whole* batch (every micro-batch and process): ``n_tokens``
    response tokens and ``n_seqs`` sequences. Summing the results over micro-batches therefore
    gives exactly the full-batch loss, whatever the split.
    """
    m = mask.to(loss.dtype)
    if mode == "token-mean":
        return (loss * m).sum() / n_tokens
    if mode == "seq-mean-token-mean":
        return ((loss * m).sum(-1) / m.sum(-1).clamp(min=1)).sum() / n_seqs
    if mode == "seq-mean-token-sum":
        return (loss * m).sum() / n_seqs
    raise ValueError(f"unknown loss aggregation '{mode}'; known: {', '.join(AGGREGATIONS)}")
