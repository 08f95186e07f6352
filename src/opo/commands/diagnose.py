"""``opo diagnose``: sample a batch, measure every response's gradient, compare reward baselines."""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from opo import rundir
from opo.algos.advantages import ADVANTAGES
from opo.config import AlgoConfig, DiagnoseConfig, OptimConfig
from opo.diagnose import baseline_variances, gradient_gram, length_fit
from opo.rollout.base import RolloutBatch
from opo.run import Run, output_dir, setup
from opo.tasks import decode, encode
from opo.update import Scoring, StepData, policy_update


def run_diagnose(cfg: DiagnoseConfig) -> dict[str, Any]:
    out_dir = output_dir(cfg.run.dir)
    rundir.check_writable(out_dir)  # before the model loads, not after the gradients
    run = setup(cfg, max_new_tokens=cfg.rollout.max_new_tokens)
    model, tok = run.model, run.tok
    P, K = cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt
    try:
        examples = [run.task.train_example(cfg.start + i) for i in range(P)]
        batch = run.engine.generate(encode(tok, examples), list(range(P)), K, cfg.rollout.max_new_tokens,
                                    cfg.rollout.temperature)
        texts = [decode(tok, r.completion) for r in batch.rollouts]
        graded = run.task.grade(texts, [examples[r.group] for r in batch.rollouts])
    finally:
        run.close()
    rewards = torch.tensor([g.reward for g in graded], dtype=torch.float64)  # (N,)
    prompts, group_index = batch.prompts()
    completions = [r.completion for r in batch.rollouts]
    lengths = torch.tensor([len(c) for c in completions])  # (N,)

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    exact = cfg.method == "exact" or (cfg.method == "auto" and K * n_params * 4 <= cfg.exact_max_gb * 2**30)
    gram, info = gradient_gram(model, prompts, completions, group_index, tok.pad_token_id, cfg.rollout.temperature,
                               run.compute.precision, None if exact else cfg.sketch_dim, cfg.run.seed,
                               progress=cfg.run.progress)
    sq_norms = torch.diagonal(gram)
    result = {
        "config": cfg.to_dict(),
        "gradients": {"method": "exact" if exact else f"count sketch, {cfg.sketch_dim} dims", **info},
        "update_seconds": _update_seconds(run, batch, rewards),
        "baselines": baseline_variances(gram, rewards, lengths, group_index),
        "length_fit": length_fit(sq_norms, lengths),
        "responses": [{"group": int(g), "length": int(n), "reward": float(r), "sq_grad_norm": float(s)}
                      for g, n, r, s in zip(group_index, lengths, rewards, sq_norms)],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "diagnose.json").write_text(json.dumps(result, indent=2))
    print(format_report(result, cfg, n_params))
    print(f"wrote {out_dir / 'diagnose.json'}")
    return result


def _update_seconds(run: Run, batch: RolloutBatch, rewards: torch.Tensor) -> float:
    """Time of one batched on-policy OPO update of the same responses (learning rate 0: weights unchanged)."""
    cfg = run.cfg
    data = StepData.from_rollouts(batch, torch.empty(0), run.tok.pad_token_id)
    data.advantages = ADVANTAGES.get("opo")(rewards.float(), data.mask, batch.group_ids())  # (N, T)
    scoring = Scoring(cfg.rollout.temperature, run.compute.precision, cfg.model.fp32_head)
    t0 = time.perf_counter()
    policy_update(run.model, torch.optim.SGD(run.model.parameters(), lr=0.0), data, AlgoConfig(), scoring,
                  OptimConfig().grad_clip)
    return time.perf_counter() - t0


def format_report(result: dict[str, Any], cfg: DiagnoseConfig, n_params: int) -> str:
    g = result["gradients"]
    n = len(result["responses"])
    head = (f"opo diagnose | model {cfg.model.path} ({n_params / 1e6:.1f}M parameters) | task {cfg.task.name} | "
            f"{cfg.rollout.prompts_per_step} prompts x {cfg.rollout.samples_per_prompt} responses | "
            f"gradients: {g['method']}")
    lines = [head, "-" * len(head), f"{'baseline':<14} {'variance':>12} {'vs none':>9}"]
    for name, v in result["baselines"].items():
        label = name + (" *" if name == "grpo" else "")
        rel = "n/a" if v["relative"] is None else f"{v['relative']:.1%}"
        lines.append(f"{label:<14} {v['variance']:>12.4g} {rel:>9}")
    lines.append("  (per-sample variance of (r - b) grad log pi, mean over prompts; * GRPO also divides by the std, "
                 "so its estimator is rescaled)")
    f = result["length_fit"]
    lines.append(f"|grad log pi|^2 vs response length: Pearson {f['pearson']:.3f}, Spearman {f['spearman']:.3f}; "
                 f"|g|^2 = {f['slope_through_origin']:.4g} * length (R^2 {f['r2_through_origin']:.3f})")
    per_seq, update = g["seconds"], result["update_seconds"]
    lines.append(f"cost: {n} per-response gradients {per_seq:.1f} s ({g['seconds_per_response']:.2f} s each) vs "
                 f"one batched update {update:.1f} s: an exact-norm baseline would make the update "
                 f"{(per_seq + update) / update:.1f}x as long")
    return "\n".join(lines)
