"""``opo diagnose``: sample a batch, measure every response's gradient, compare reward baselines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from opo.config import Config, DiagnoseConfig
from opo.diagnose import baseline_variances, gradient_gram, length_fit
from opo.evaluate import decode, encode
from opo.models import load_model, stop_token_ids
from opo.rollout.hf import HFEngine
from opo.runtime import pick_threads, resolve_precisions
from opo.tasks import build_task
from opo.update import StepData, policy_update


def run_diagnose(cfg: DiagnoseConfig) -> dict[str, Any]:
    out_dir = Path(cfg.out_dir.replace("{time}", time.strftime("%Y%m%d-%H%M%S")))
    cfg.model.precision, cfg.rollout.precision = resolve_precisions(cfg.model.precision, cfg.rollout.precision)
    pick_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model, tok = load_model(cfg.model.path, cfg.model.trust_remote_code, cfg.seed, cfg.model.attention)
    task = build_task(cfg.task)
    P, K = cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt
    try:
        examples = [task.train_example(cfg.start + i) for i in range(P)]
        engine = HFEngine(model, stop_token_ids(model, tok), tok.pad_token_id, cfg.rollout.precision, seed=cfg.seed)
        batch = engine.generate(encode(tok, examples), list(range(P)), K, cfg.rollout.max_new_tokens,
                                cfg.rollout.temperature)
        texts = [decode(tok, r.completion) for r in batch.rollouts]
        graded = task.grade(texts, [examples[r.group] for r in batch.rollouts])
    finally:
        task.close()
    rewards = torch.tensor([g.reward for g in graded], dtype=torch.float64)  # (N,)
    prompts, group_index = batch.prompts()
    completions = [r.completion for r in batch.rollouts]
    lengths = torch.tensor([len(c) for c in completions])  # (N,)

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    exact = cfg.method == "exact" or (cfg.method == "auto" and K * n_params * 4 <= cfg.exact_max_gb * 2**30)
    gram, info = gradient_gram(model, prompts, completions, group_index, tok.pad_token_id, cfg.rollout.temperature,
                               cfg.model.precision, None if exact else cfg.sketch_dim, cfg.seed)
    sq_norms = torch.diagonal(gram)
    result = {
        "config": cfg.to_dict(),
        "gradients": {"method": "exact" if exact else f"count sketch, {cfg.sketch_dim} dims", **info},
        "update_seconds": _update_seconds(model, cfg, batch, rewards, tok.pad_token_id),
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


def _update_seconds(model, cfg: DiagnoseConfig, batch, rewards: torch.Tensor, pad_id: int) -> float:
    """Time of one batched on-policy update of the same responses (learning rate 0: weights unchanged)."""
    train_cfg = Config(model=cfg.model, rollout=cfg.rollout)
    data = StepData.from_rollouts(batch, rewards.float(), "opo", {}, pad_id)
    t0 = time.perf_counter()
    policy_update(model, torch.optim.SGD(model.parameters(), lr=0.0), train_cfg, data)
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
