"""Gradient-variance diagnostic: how much each reward baseline reduces the variance of the policy gradient.

For responses y_i to a prompt, with score-function gradients g_i = grad_theta log pi(y_i | x)
(summed over the response's tokens) and rewards r_i, the policy-gradient estimator with a scalar
baseline b averages v_i = (r_i - b) g_i. Since E[g] = 0, its per-sample variance is

    Var(b) = E[(r - b)^2 |g|^2] - |E[r g]|^2,

minimised by b* = E[|g|^2 r] / E[|g|^2] (Hao et al. 2025, arXiv 2505.23585, Eq. 5; Greensmith et
al. 2004 for the optimal baseline). OPO replaces |g_i|^2 by the response length l_i (Eq. 6), which
holds when per-token gradients are near-orthogonal and of similar size. This module measures
the g_i, so it can say how well that assumption holds and what each baseline achieves.

Everything downstream of the gradients needs only their inner products within a group (the Gram
matrix), so gradients are either kept exactly (one group at a time) or compressed by a count
sketch (Charikar et al. 2002), whose inner products are unbiased with relative error ~sqrt(2/d).
"""

from __future__ import annotations

import math
import time
from typing import Optional

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from opo.algos.advantages import ADVANTAGES
from opo.logprobs import PromptBatch, completion_logprobs
from opo.runtime import model_device
from opo.update import autocast_context

# Baselines compared: the registry's estimators give each response's coefficient c_i = r_i - b_i
# (GRPO's also divides by the group std); "none" and "optimal" are computed here.
REGISTRY_BASELINES = {"group_mean": "dr_grpo", "grpo": "grpo", "rloo": "rloo", "opo": "opo"}


class CountSketch:
    """A seeded linear map R^D -> R^d with E[<S a, S b>] = <a, b> (Charikar et al. 2002).

    Each coordinate goes to one of d buckets with a random sign; the buckets and signs of each
    parameter tensor are drawn once (int32 and int8, ~5 bytes per parameter).
    """

    def __init__(self, params: list[torch.Tensor], dim: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.buckets = [torch.randint(0, dim, (p.numel(),), generator=g, dtype=torch.int32) for p in params]
        self.signs = [torch.randint(0, 2, (p.numel(),), generator=g, dtype=torch.int8) * 2 - 1 for p in params]

    def __call__(self, grads: list[torch.Tensor]) -> torch.Tensor:
        out = torch.zeros(self.dim, dtype=torch.float64)  # (d,)
        for grad, b, s in zip(grads, self.buckets, self.signs):
            out.index_add_(0, b.long(), grad.reshape(-1).double() * s)
        return out


def sequence_gradient(
    model: PreTrainedModel,
    prompt: list[int],
    completion: list[int],
    pad_id: int,
    temperature: float = 1.0,
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """grad_theta of sum_t log pi(y_t | x, y_<t) for one response: one gradient per parameter (on the
    model's device)."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = model_device(model)
    ids = torch.tensor([completion], dtype=torch.long, device=device)  # (1, T)
    with autocast_context(precision, device.type):
        logp, _ = completion_logprobs(model, PromptBatch.from_lists([prompt], pad_id).to(device), ids,
                                      torch.ones_like(ids, dtype=torch.float32),
                                      torch.zeros(1, dtype=torch.long, device=device), temperature)
    grads = torch.autograd.grad(logp.sum(), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def gradient_gram(
    model: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    group_index: torch.Tensor,
    pad_id: int,
    temperature: float = 1.0,
    precision: str = "fp32",
    sketch_dim: Optional[int] = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Inner products ``(N, N)`` of the responses' score-function gradients within each group.

    ``group_index`` ``(N,)`` gives each completion's prompt. Entries between different groups are
    NaN (never needed). ``sketch_dim`` None keeps each group's gradients exactly (fp64 inner
    products); otherwise they are count-sketched to that many dimensions first. ``progress``: a bar
    with an ETA (on a terminal).
    """
    n = len(completions)
    gram = torch.full((n, n), float("nan"), dtype=torch.float64)
    params = [p for p in model.parameters() if p.requires_grad]
    sketch = CountSketch(params, sketch_dim, seed) if sketch_dim else None
    n_params = sum(p.numel() for p in params)
    t0 = time.perf_counter()
    bar = tqdm(total=n, desc="gradients", unit="response", dynamic_ncols=True, disable=None if progress else True)
    for g in torch.unique(group_index).tolist():
        rows = (group_index == g).nonzero().squeeze(-1).tolist()
        # filled in place: one (K, D) block (or (K, d) sketches), no second copy
        block = torch.empty(len(rows), sketch.dim if sketch else n_params,
                            dtype=torch.float64 if sketch else torch.float32)
        for j, i in enumerate(rows):
            # to the CPU, where the block and the sketch live (GPU memory stays the model's)
            grads = [x.cpu() for x in sequence_gradient(model, prompts[g], completions[i], pad_id, temperature,
                                                        precision)]
            if sketch:
                block[j] = sketch(grads)
            else:
                torch.cat([x.reshape(-1) for x in grads], out=block[j])
            bar.update()
        idx = torch.tensor(rows)
        gram[idx.unsqueeze(1), idx.unsqueeze(0)] = _gram(block)  # (K, K)
    bar.close()
    seconds = time.perf_counter() - t0
    return gram, {"seconds": seconds, "seconds_per_response": seconds / max(n, 1),
                  "dims": float(sketch_dim or n_params)}


def _gram(block: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """``block @ block.T`` ``(K, K)`` in fp64, a column chunk at a time (no fp64 copy of a (K, D) block)."""
    out = torch.zeros(block.shape[0], block.shape[0], dtype=torch.float64)
    for start in range(0, block.shape[1], chunk):
        part = block[:, start : start + chunk].double()
        out += part @ part.T
    return out


def baseline_coefficients(
    rewards: torch.Tensor, lengths: torch.Tensor, group_ids: torch.Tensor, sq_norms: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each baseline's per-response coefficient c_i ``(N,)`` (the update's weight on g_i).

    rewards, lengths, group_ids, sq_norms (|g_i|^2): ``(N,)``. ``optimal`` is b* = sum_i |g_i|^2 r_i /
    sum_i |g_i|^2 per group, from the measured norms.
    """
    mask = (torch.arange(int(lengths.max())).unsqueeze(0) < lengths.unsqueeze(1)).double()  # (N, T)
    r = rewards.double()
    out = {"none": r.clone()}
    for label, name in REGISTRY_BASELINES.items():
        out[label] = ADVANTAGES.get(name)(r, mask, group_ids)[:, 0]
    b_opt = torch.zeros_like(r)
    for g in torch.unique(group_ids):
        sel = group_ids == g
        w = sq_norms[sel].double()
        b_opt[sel] = (w * r[sel]).sum() / w.sum().clamp(min=1e-300)
    out["optimal"] = r - b_opt
    return out


def estimator_variance(gram: torch.Tensor, rewards: torch.Tensor, coeffs: torch.Tensor) -> float:
    """Per-sample variance of the estimator with weights c_i ``(K,)`` on one prompt's gradients:
    mean_i c_i^2 |g_i|^2 - |E[r g]|^2, the last term from pairs i != j (unbiased). ``gram`` ``(K, K)``."""
    k = len(rewards)
    r = rewards.double()
    cross = (r @ gram @ r - (r**2 * torch.diagonal(gram)).sum()) / (k * (k - 1))  # |E[r g]|^2
    return float((coeffs.double() ** 2 * torch.diagonal(gram)).mean() - cross)


def baseline_variances(
    gram: torch.Tensor, rewards: torch.Tensor, lengths: torch.Tensor, group_ids: torch.Tensor
) -> dict[str, dict[str, float]]:
    """Per-sample variance of the policy-gradient estimator under each baseline, averaged over prompts.

    ``Var = mean_i c_i^2 |g_i|^2 - |E[r g]|^2`` per prompt, with c_i each baseline's coefficient and
    |E[r g]|^2 estimated without bias from pairs i != j: sum_{i != j} r_i r_j <g_i, g_j> / (K (K - 1)).
    The mini-batch estimator over K responses has this variance divided by K (for a fixed b).
    GRPO's coefficients are also divided by the group std, so its figure is of a rescaled estimator.
    Returns, per baseline, ``variance`` and ``relative`` (to no baseline; None when that is 0, e.g.
    every reward 0).
    """
    sq = torch.diagonal(gram)  # (N,) |g_i|^2
    coeffs = baseline_coefficients(rewards, lengths, group_ids, sq)
    per_group: dict[str, list[float]] = {name: [] for name in coeffs}
    for g in torch.unique(group_ids):
        idx = (group_ids == g).nonzero().squeeze(-1)
        if len(idx) < 2:
            continue
        block = gram[idx][:, idx]  # (K, K)
        for name, c in coeffs.items():
            per_group[name].append(estimator_variance(block, rewards[idx], c[idx]))
    base = sum(per_group["none"]) / max(len(per_group["none"]), 1)
    out = {}
    for name, values in per_group.items():
        v = sum(values) / max(len(values), 1)
        out[name] = {"variance": v, "relative": v / base if base else None}  # None: no variance to reduce
    return out


def length_fit(sq_norms: torch.Tensor, lengths: torch.Tensor) -> dict[str, float]:
    """How well the response length predicts |g|^2: Pearson and Spearman correlation, the slope of
    |g|^2 = a l (through the origin, OPO's assumption) with its R^2, and an OLS line."""
    y, x = sq_norms.double(), lengths.double()
    pearson = float(torch.corrcoef(torch.stack([x, y]))[0, 1]) if x.std() > 0 and y.std() > 0 else math.nan
    rank = lambda v: v.argsort().argsort().double()  # noqa: E731 (ties broken by order)
    spearman = float(torch.corrcoef(torch.stack([rank(x), rank(y)]))[0, 1]) if x.std() > 0 else math.nan
    a = float((x * y).sum() / (x * x).sum())
    r2_origin = 1.0 - float(((y - a * x) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp(min=1e-300))
    if x.std() > 0:
        slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
        intercept = float(y.mean() - slope * x.mean())
    else:
        slope, intercept = math.nan, math.nan
    return {"pearson": pearson, "spearman": spearman, "slope_through_origin": a, "r2_through_origin": r2_origin,
            "ols_slope": slope, "ols_intercept": intercept}
