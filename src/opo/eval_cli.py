"""``opo eval``: sample, grade, print a table, write summary.json and samples.jsonl."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from opo.config import EvalConfig
from opo.evaluate import evaluate, sample_rows
from opo.models import load_model, stop_token_ids
from opo.rollout.hf import HFEngine
from opo.runtime import pick_threads, resolve_precision
from opo.tasks import build_task, limit_prompt_length


def run_eval(cfg: EvalConfig) -> dict[str, float]:
    started = time.time()
    out_dir = Path(cfg.out_dir.replace("{time}", time.strftime("%Y%m%d-%H%M%S")))
    cfg.precision = resolve_precision(cfg.precision)
    pick_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model, tok = load_model(cfg.model.path, cfg.model.trust_remote_code, cfg.seed, cfg.model.attention)
    model.eval()
    task = build_task(cfg.task)
    limit_prompt_length(task, tok, model, cfg.max_new_tokens)
    engine = HFEngine(model, stop_token_ids(model, tok), tok.pad_token_id, cfg.precision, seed=cfg.seed)
    try:
        metrics, samples = evaluate(engine, tok, task, n=cfg.n, ks=tuple(cfg.k), temperature=cfg.temperature,
                                    max_new_tokens=cfg.max_new_tokens, greedy=cfg.greedy, batch_size=cfg.batch_size,
                                    repetition=(cfg.repetition.n, cfg.repetition.min_count))
    finally:
        task.close()
    metrics["data/skipped_rows"] = float(task.skipped_rows)
    metrics["time/eval_s"] = time.time() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps({"config": cfg.to_dict(), "metrics": metrics}, indent=2))
    with open(out_dir / "samples.jsonl", "w") as f:
        for row in sample_rows(samples):
            f.write(json.dumps(row) + "\n")
    print(format_table(metrics, cfg))
    print(f"wrote {out_dir / 'summary.json'} and {out_dir / 'samples.jsonl'}")
    return metrics


def format_table(metrics: dict[str, float], cfg: EvalConfig) -> str:
    """The headline metrics, then one row per subject/level where the data has them."""
    head = f"{cfg.task.name} | model {cfg.model.path} | {int(metrics['eval/n'])} problems"
    if cfg.n:
        head += f" | n={cfg.n}, temperature {cfg.temperature}"
    head += f" | max_new_tokens {cfg.max_new_tokens}"
    lines = [head, "-" * len(head)]
    groups: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        name = key.removeprefix("eval/")
        if name.startswith("by_"):
            group, metric = name.rsplit("/", 1)
            groups.setdefault(group, {})[metric] = value
        elif name.startswith(("length", "grader_")):
            lines.append(f"{name:<24} {value:>8.1f}")
        elif key.startswith("eval/") and name not in ("n", "samples_per_problem"):
            lines.append(f"{name:<24} {value:>8.1%}")
    if groups:
        cols = [c for c in ("accuracy", "pass@1") if any(c in g for g in groups.values())]
        lines.append("")
        lines.append(f"{'group':<40} {'n':>5} " + " ".join(f"{c:>9}" for c in cols))
        for group, vals in groups.items():
            label = group.removeprefix("by_")
            lines.append(f"{label:<40} {int(vals['n']):>5} " + " ".join(f"{vals.get(c, 0.0):>9.1%}" for c in cols))
    lines.append(f"{'time':<24} {metrics['time/eval_s']:>7.0f}s")
    return "\n".join(lines)
