"""``opo eval``: sample, grade, write each sample as it is graded, print a table, write summary.json.

Ctrl-C stops it with the finished problems' table and files kept.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from opo import rundir
from opo.config import EvalConfig
from opo.evaluate import Sample, evaluate, metrics_of
from opo.hybrid_eval import evaluate_hybrid, hybrid_metrics
from opo.judges import PairJudge
from opo.judges.build import build_judge
from opo.judges.select import best_of_n
from opo.run import Run, output_dir, setup


def run_eval(cfg: EvalConfig) -> dict[str, float]:
    """Evaluate ``cfg.model`` on ``cfg.task``; returns the metrics. Interrupted (KeyboardInterrupt),
    it saves and prints the metrics of the problems whose samples are all done, then re-raises."""
    started = time.time()
    out_dir = output_dir(cfg.run.dir)
    rundir.check_writable(out_dir)  # before minutes of loading and sampling, not after
    run = setup(cfg, max_new_tokens=cfg.max_new_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    judge = _judge(cfg, run, out_dir) if cfg.judge.enabled else None  # a bad judge fails before the sampling
    done: list[Sample] = []
    try:
        with open(out_dir / "samples.jsonl", "w") as samples_file:
            def keep(new: list[Sample]) -> None:
                done.extend(new)
                samples_file.writelines(json.dumps(asdict(s)) + "\n" for s in new)
                samples_file.flush()

            if run.modes:  # a hybrid model: when it thinks and whether that is the better mode
                metrics, _ = evaluate_hybrid(run.engine, run.tok, run.task, run.modes, cfg.hybrid,
                                             temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                             batch_size=cfg.batch_size, on_samples=keep, progress=cfg.run.progress)
            else:
                metrics, samples = evaluate(run.engine, run.tok, run.task, n=cfg.n, ks=tuple(cfg.k),
                                            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                            greedy=cfg.greedy, batch_size=cfg.batch_size,
                                            repetition=(cfg.repetition.n, cfg.repetition.min_count),
                                            on_samples=keep, progress=cfg.run.progress)
                if judge is not None:  # best-of-n: the judge picks one of each problem's n samples
                    picked, picks = best_of_n(samples, judge, cfg.judge.select, votes=cfg.judge.votes,
                                              rating=cfg.judge.rating, seed=cfg.run.seed)
                    metrics.update(picked)
                    (out_dir / "picks.json").write_text(json.dumps(picks, indent=1))
    except KeyboardInterrupt:
        _finish(cfg, run, out_dir, _complete_problems(done, cfg, run), started, interrupted=True)
        raise
    finally:
        run.close()
    return _finish(cfg, run, out_dir, metrics, started)


def _judge(cfg: EvalConfig, run: Run, out_dir: Path) -> PairJudge:
    try:
        judge = build_judge(cfg.judge, sampling=run.compute.sampling, seed=cfg.run.seed,
                            cache=out_dir / "judge_cache.jsonl", device=run.compute.device)
    except BaseException:
        run.close()
        raise
    return PairJudge(judge, cfg.judge.order, cfg.run.seed)


def _complete_problems(samples: list, cfg: EvalConfig, run: Run) -> dict[str, float]:
    """Metrics of the problems that have every sample (greedy and n sampled) done."""
    examples = run.task.eval_examples()
    if run.modes:  # hybrid samples arrive a whole problem at a time
        return hybrid_metrics(samples, examples, cfg.hybrid) if samples else {}
    counts = Counter(s.problem for s in samples)
    finished = [s for s in samples if counts[s.problem] == int(cfg.greedy) + cfg.n]
    return metrics_of(finished, examples, tuple(cfg.k) if cfg.n else ()) if finished else {}


def _finish(cfg: EvalConfig, run: Run, out_dir: Path, metrics: dict[str, float], started: float,
            interrupted: bool = False) -> dict[str, float]:
    metrics["data/skipped_rows"] = float(run.task.skipped_rows)
    metrics["time/eval_s"] = time.time() - started
    summary = {"config": cfg.to_dict(), "metrics": metrics, **({"interrupted": True} if interrupted else {})}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if "eval/n" in metrics:
        print(format_table(metrics, cfg))
    if interrupted:
        print(f"interrupted: the table covers the {int(metrics.get('eval/n', 0))} problems with every sample done")
    print(f"wrote {out_dir / 'summary.json'} and {out_dir / 'samples.jsonl'}")
    return metrics


def format_table(metrics: dict[str, float], cfg: EvalConfig) -> str:
    """The headline metrics, then one row per subject/level where the data has them."""
    head = f"{cfg.task.name} | model {cfg.model.path} | {int(metrics['eval/n'])} problems"
    if cfg.hybrid.enabled:  # n, k and greedy do not apply: each mode is sampled, then one free greedy answer
        head += f" | hybrid: {cfg.hybrid.eval_samples} per mode, temperature {cfg.temperature}, then greedy"
    elif cfg.n:
        head += f" | n={cfg.n}, temperature {cfg.temperature}"
        if cfg.judge.enabled:
            head += f" | judge {cfg.judge.backend}:{cfg.judge.model}"
    head += f" | max_new_tokens {cfg.max_new_tokens}"
    lines = [head, "-" * len(head)]
    groups: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if not key.startswith(("eval/", "hybrid/")):
            continue
        name = key.split("/", 1)[1]
        if name.startswith("by_"):
            group, metric = name.rsplit("/", 1)
            groups.setdefault(group, {})[metric] = value
        elif name.startswith(("grader_", "judge_calls", "judge_no_verdict", "judge_failures")) or name.endswith("length"):
            lines.append(f"{name:<24} {value:>8.1f}")
        elif name not in ("n", "samples_per_problem"):
            lines.append(f"{name:<24} {value:>8.1%}")
    if groups:
        cols = [c for c in ("accuracy", "pass@1", "hacc", "think_rate", "think_accuracy", "no_think_accuracy")
                if any(c in g for g in groups.values())]
        lines.append("")
        lines.append(f"{'group':<40} {'n':>5} " + " ".join(f"{c:>{max(9, len(c))}}" for c in cols))
        for group, vals in groups.items():
            label = group.removeprefix("by_")
            lines.append(f"{label:<40} {int(vals['n']):>5} " + " ".join(f"{vals.get(c, 0.0):>{max(9, len(c))}.1%}" for c in cols))
    lines.append(f"{'time':<24} {metrics['time/eval_s']:>7.0f}s")
    return "\n".join(lines)
