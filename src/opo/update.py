"""The policy update: micro-batching by a token budget, loss, backward, optimizer step.

Exact on-policy (the default) is one optimizer step per rollout batch with no old-log-prob and
no reference pass. Off-policy (``ppo_epochs > 1`` or ``mini_batches > 1``) first records the
old log-probs, then takes one step per mini-batch per epoch with the clipped objective.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from transformers import PreTrainedModel

from opo.algos.losses import KL_ESTIMATORS, POLICY_LOSSES, ROLLOUT_CORRECTIONS, aggregate
from opo.config import AlgoConfig
from opo.distributed import Dist, full_tensor, run
from opo.logprobs import PromptBatch, completion_logprobs, decoder_calls
from opo.rollout.base import RolloutBatch
from opo.runtime import model_device


def autocast_context(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device_type`` (cpu | cuda; the weights stay fp32 masters) or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Scoring:
    """How the trainer scores completions: the sampler's temperature, the compute precision, the
    fp32 output layer, the token budget of one micro-batch, and the rollout correction (a
    :data:`~opo.algos.losses.ROLLOUT_CORRECTIONS` name or ``none``) with its threshold."""

    temperature: float = 1.0
    precision: str = "fp32"
    fp32_head: bool = True
    micro_batch_tokens: int = 4096
    correction: str = "none"
    correction_threshold: float = 2.0


@dataclass
class StepData:
    """Everything one rollout batch contributes to the update.

    ``prompts`` holds G distinct prompts; ``group_index`` ``(N,)`` maps each completion to its
    prompt; ``completions``, ``mask``, ``sampler_logp`` and ``advantages`` are ``(N, T)``.
    """

    prompts: list[list[int]]
    group_index: torch.Tensor
    completions: torch.Tensor
    mask: torch.Tensor
    sampler_logp: torch.Tensor
    advantages: torch.Tensor
    pad_id: int

    @classmethod
    def from_rollouts(cls, batch: RolloutBatch, advantages: torch.Tensor, pad_id: int) -> "StepData":
        """The update's inputs from a rollout batch and its token advantages ``(N, T)``."""
        prompts, group_index = batch.prompts()
        completions, mask, sampler_logp = batch.completion_tensors(pad_id)  # (N, T) each
        return cls(prompts, group_index, completions, mask, sampler_logp, advantages, pad_id)

    def to(self, device: torch.device) -> "StepData":
        """This batch with its tensors on ``device`` (the model's): the update computes there."""
        return StepData(self.prompts, self.group_index.to(device), self.completions.to(device), self.mask.to(device),
                        self.sampler_logp.to(device), self.advantages.to(device), self.pad_id)


def micro_batches(data: StepData, groups: list[int], token_budget: int) -> list[list[int]]:
    """Split whole groups (prompt rows) into micro-batches of at most ``token_budget`` tokens.

    A group costs its prompt once plus each completion, as the shared-prefix forward computes
    it. A group larger than the budget gets a micro-batch of its own.
    """
    lengths = data.mask.sum(-1)  # (N,)
    out: list[list[int]] = []
    current: list[int] = []
    used = 0
    for g in groups:
        rows = data.group_index == g
        cost = len(data.prompts[g]) + int(rows.sum()) * int(lengths[rows].max())
        if current and used + cost > token_budget:
            out.append(current)
            current, used = [], 0
        current.append(g)
        used += cost
    if current:
        out.append(current)
    return out


def _rows(data: StepData, groups: list[int]) -> torch.Tensor:
    """Indices ``(n,)`` of the completions that belong to ``groups``, group by group."""
    return torch.cat([(data.group_index == g).nonzero().squeeze(-1) for g in groups])


def _select(data: StepData, groups: list[int]) -> tuple[PromptBatch, torch.Tensor, torch.Tensor]:
    """Prompt batch, row indices ``(n,)`` and per-row prompt index ``(n,)`` of some groups, on ``data``'s device."""
    rows = _rows(data, groups)
    remap = {g: i for i, g in enumerate(groups)}
    device = data.mask.device
    local = torch.tensor([remap[g] for g in data.group_index[rows].tolist()], dtype=torch.long, device=device)
    return PromptBatch.from_lists([data.prompts[g] for g in groups], data.pad_id).to(device), rows, local


def _forward(model: PreTrainedModel, scoring: Scoring, data: StepData, groups: list[int], entropy_grad: bool = False,
             calls: int = 0):
    """Log-probs and entropies of ``groups``' completions, making at least ``calls`` decoder calls (FSDP)."""
    batch, rows, local = _select(data, groups)
    width = int(data.mask[rows].sum(-1).max())  # trim padding shared by the whole micro-batch
    with autocast_context(scoring.precision, data.mask.device.type):
        logp, ent = run(
            model, completion_logprobs, batch, data.completions[rows, :width], data.mask[rows, :width], local,
            temperature=scoring.temperature, fp32_head=scoring.fp32_head, with_entropy_grad=entropy_grad,
            min_decoder_calls=calls,
        )
    return rows, width, logp, ent  # logp, ent: (n, width)


def _calls(data: StepData) -> Callable[[list[int]], int]:
    """Decoder calls of :func:`_forward` on some groups (see :meth:`Dist.aligned`)."""
    return lambda groups: decoder_calls(data.mask[_rows(data, groups)])


@torch.no_grad()
def record_logprobs(
    model: PreTrainedModel, scoring: Scoring, data: StepData, groups: list[int], counts: Counter, key: str,
    dist: Dist = Dist(),
) -> torch.Tensor:
    """Log-probs ``(N, T)`` of ``groups``' completions under ``model``, without gradient (old or
    reference policy); zero on the other rows. ``dist``: the job ``model`` is sharded over, if any."""
    out = torch.zeros_like(data.mask, dtype=_logprob_dtype(model))
    counts[key] += 0  # the same keys on every process, also one without groups here
    for mb, real, calls in dist.aligned(micro_batches(data, groups, scoring.micro_batch_tokens), groups[:1],
                                        _calls(data)):
        rows, width, logp, _ = _forward(model, scoring, data, mb, calls=calls)
        if real:
            out[rows, :width] = logp
            counts[key] += 1
    return out


def policy_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    data: StepData,
    algo: AlgoConfig,
    scoring: Scoring,
    grad_clip: float,
    ref_model: Optional[PreTrainedModel] = None,
    generator: Optional[torch.Generator] = None,
    measure_shift: bool = False,
    dist: Dist = Dist(),
) -> dict[str, float]:
    """Run the optimizer step(s) of ``algo`` for one rollout batch and return metrics; ``grad_clip``:
    the global gradient norm is clipped to it (0: off).

    ``data`` is the global batch; this process computes forward and backward for its share of the
    groups (``dist.share``, all of them on one process), normalises by the global token and
    sequence counts and sums the gradients across processes before each optimizer step, so the
    step equals the single-process one on the same batch.

    With ``measure_shift`` it also estimates the policy shift KL(pi_before || pi_after) on the
    batch's own tokens (sampled from pi_before), with the k1 and k3 estimators: one extra forward
    pass after the last optimizer step.
    """
    data = data.to(model_device(model))  # the caller's batch stays where it is (the CPU, for its metrics)
    n_groups = len(data.prompts)
    mine = list(dist.share(n_groups))
    p = _Pass(model, data, algo, scoring)
    if algo.off_policy:
        p.old_logp = record_logprobs(model, scoring, data, mine, p.counts, "passes/old_logprob", dist)
    # pi_before's log-probs: recorded off-policy; on-policy the training forward gives them for free
    p.before_logp = p.old_logp
    if measure_shift and p.old_logp is None:
        p.before_logp = torch.zeros_like(data.mask, dtype=_logprob_dtype(model))
    if ref_model is not None:
        p.ref_logp = record_logprobs(ref_model, scoring, data, mine, p.counts, "passes/reference")

    grad_norms: list[float] = []
    for _ in range(algo.ppo_epochs):
        order = torch.randperm(n_groups, generator=generator).tolist() if algo.off_policy else list(range(n_groups))
        size = n_groups // algo.mini_batches
        for start in range(0, n_groups, size):
            grad_norms.append(_optimizer_step(p, optimizer, order[start : start + size], mine, grad_clip, dist))
    if measure_shift:
        after_logp = record_logprobs(model, scoring, data, mine, p.counts, "passes/policy_shift", dist)
        # Samples come from pi_before: KL(before || after), Schulman 2020. Rows of other processes
        # are zero in both log-prob tensors and add nothing.
        for name in ("k1", "k3"):
            p.sums[f"policy_shift/{name}"] = float((KL_ESTIMATORS.get(name)(p.before_logp, after_logp)
                                                    * data.mask).sum())
    return _metrics(p, grad_norms, dist)


def _optimizer_step(p: "_Pass", optimizer: torch.optim.Optimizer, mini: list[int], mine: list[int], grad_clip: float,
                    dist: Dist) -> float:
    """One optimizer step on mini-batch ``mini`` (its groups this process holds, by micro-batch);
    returns the gradient norm before clipping. A NaN/inf gradient skips the step."""
    own = set(mine)
    rows_all = _rows(p.data, mini)
    # Normalisers of the whole mini-batch (all processes), so neither micro-batching nor the
    # number of processes changes the gradient.
    p.n_tokens, p.n_seqs = float(p.data.mask[rows_all].sum()), float(len(rows_all))
    optimizer.zero_grad(set_to_none=True)
    local = [g for g in mini if g in own]
    for mb, real, calls in dist.aligned(micro_batches(p.data, local, p.scoring.micro_batch_tokens), mine[:1],
                                        _calls(p.data)):
        _micro_batch(p, mb, real, calls)
    dist.sum_gradients(p.model)
    norm = grad_norm(p.model, grad_clip)
    if math.isfinite(norm):
        optimizer.step()  # a NaN/inf gradient must not reach the weights
    optimizer.zero_grad(set_to_none=True)
    return norm


@dataclass
class _Pass:
    """One update's shared inputs and its running sums (token-weighted; every key present on
    every process, so the reductions pair up)."""

    model: PreTrainedModel
    data: StepData
    algo: AlgoConfig
    scoring: Scoring
    old_logp: Optional[torch.Tensor] = None  # (N, T), off-policy
    ref_logp: Optional[torch.Tensor] = None  # (N, T), with a KL term
    before_logp: Optional[torch.Tensor] = None  # (N, T), when the policy shift is measured
    n_tokens: float = 0.0
    n_seqs: float = 0.0
    gap_max: float = 0.0
    counts: Counter = field(default_factory=lambda: Counter({"passes/train_forward": 0}))
    sums: Counter = field(default_factory=lambda: Counter(
        dict.fromkeys(("loss", "tokens", "entropy", "clipped", "logprob_gap", "logprob_gap_signed", "gap_over",
                       "is_weight", "is_affected", "kl"), 0.0)))


def _micro_batch(p: _Pass, groups: list[int], real: bool, calls: int) -> None:
    """Forward, loss and backward of one micro-batch (gradients accumulate); ``real`` False: a pass
    that only keeps FSDP's collectives paired, with a zero gradient."""
    algo, data = p.algo, p.data
    rows, width, logp, ent = _forward(p.model, p.scoring, data, groups, algo.entropy_coef > 0, calls)
    if not real:
        (logp.sum() * 0.0).backward()
        return
    p.counts["passes/train_forward"] += 1
    if p.before_logp is not None and p.old_logp is None:
        p.before_logp[rows, :width] = logp.detach()  # (n, width)
    mask = data.mask[rows, :width]  # (n, width)
    old = None if p.old_logp is None else p.old_logp[rows, :width]
    token_loss, clipped = POLICY_LOSSES.get(algo.loss)(logp, old, data.advantages[rows, :width],
                                                       **algo.loss_params)  # (n, width)
    # the sampler's log-probs against the trainer's policy at rollout time: pi_old off-policy, else pi itself
    log_ratio = (logp.detach() if old is None else old) - data.sampler_logp[rows, :width]  # (n, width)
    weights, affected = _correction(p.scoring, log_ratio, mask)
    token_loss = token_loss * weights
    if p.ref_logp is not None:
        kl = KL_ESTIMATORS.get(algo.kl_estimator)(logp, p.ref_logp[rows, :width])
        token_loss = token_loss + algo.kl_coef * kl
        p.sums["kl"] += float((kl.detach() * mask).sum())
    if algo.entropy_coef > 0:
        token_loss = token_loss - algo.entropy_coef * ent
    loss = aggregate(token_loss, mask, algo.aggregation, p.n_tokens, p.n_seqs)
    loss.backward()
    gap = log_ratio.abs() * mask
    p.sums.update({  # Counter.update adds
        "loss": float(loss.detach()), "tokens": float(mask.sum()), "entropy": float((ent.detach() * mask).sum()),
        "clipped": float((clipped.float() * mask).sum()), "logprob_gap": float(gap.sum()),
        "logprob_gap_signed": float((log_ratio * mask).sum()),
        "gap_over": float((gap > math.log(p.scoring.correction_threshold)).sum()),
        "is_weight": float((weights * mask).sum()), "is_affected": float(affected.sum())})
    p.gap_max = max(p.gap_max, float(gap.max()))


def _correction(scoring: Scoring, log_ratio: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance weights ``(n, width)`` of the policy-gradient term and the tokens they truncated or
    masked; weight 1 and none affected without a correction (exact on-policy)."""
    if scoring.correction == "none":
        return torch.ones_like(mask), torch.zeros_like(mask, dtype=torch.bool)
    return ROLLOUT_CORRECTIONS.get(scoring.correction)(log_ratio, mask, scoring.correction_threshold)


def _metrics(p: _Pass, grad_norms: list[float], dist: Dist) -> dict[str, float]:
    """The update's metrics over every process's share of the batch."""
    sums = Counter(dist.reduce({**p.sums, **p.counts}))
    gap_max = dist.reduce({"gap": p.gap_max}, op="max")["gap"]
    tokens = max(sums["tokens"], 1.0)
    updates = len(grad_norms)
    skipped = sum(not math.isfinite(n) for n in grad_norms)
    metrics = {
        "loss": sums["loss"] / updates,
        "entropy": sums["entropy"] / tokens,
        "clip_frac": sums["clipped"] / tokens,
        "logprob_gap/mean_abs": sums["logprob_gap"] / tokens,
        "logprob_gap/max_abs": gap_max,
        "logprob_gap/mean": sums["logprob_gap_signed"] / tokens,
        "logprob_gap/over_threshold": sums["gap_over"] / tokens,
        "grad_norm": sum(grad_norms) / updates,
        "optimizer_steps": float(updates - skipped),
        "skipped_steps": float(skipped),
        "micro_batches": sums["passes/train_forward"] / updates,
        **{k: sums[k] for k in p.counts},
    }
    if p.scoring.correction != "none":
        metrics["correction/weight_mean"] = sums["is_weight"] / tokens
        metrics["correction/affected"] = sums["is_affected"] / tokens
    if p.ref_logp is not None:
        metrics["kl_ref"] = sums["kl"] / tokens
    if "policy_shift/k1" in p.sums:
        for name in ("k1", "k3"):
            metrics[f"policy_shift/{name}"] = sums[f"policy_shift/{name}"] / max(float(p.data.mask.sum()), 1.0)
    return metrics


def _logprob_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the head's log-probs: fp32, or fp64 for an fp64 model."""
    return torch.promote_types(next(model.parameters()).dtype, torch.float32)


def grad_norm(model: PreTrainedModel, clip: float) -> float:
    """The gradient's global norm (over all shards) before clipping; clips it to ``clip`` if ``clip > 0``."""
    params = [p for p in model.parameters() if p.grad is not None]
    if clip > 0:
        return float(full_tensor(torch.nn.utils.clip_grad_norm_(params, clip)))
    return float(full_tensor(torch.nn.utils.get_total_norm([p.grad for p in params])))
