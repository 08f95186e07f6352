"""A fault campaign: random SIGKILLs of real `opo train` and `opo eval` processes on the tiny model,
then resume, and check that nothing was lost or mixed. Not a unit test: it runs for a fixed budget.

    .venv/bin/python experiments/fault_campaign.py --budget 600

Scenarios, drawn at random until the budget is spent:
  train  a run killed at a random moment (also its resumes, with probability 1/2), resumed until it
         completes; then its logs hold each step once, in order, every line JSON, and its final
         weights equal those of an uninterrupted run (deterministic mode);
  save   a run killed the moment a checkpoint's temporary directory appears, then resumed and checked
         the same way;
  eval   `opo eval` killed at a random moment: every complete line of samples.jsonl is JSON; or
         interrupted with SIGINT: exit 130, summary.json says so and counts what samples.jsonl holds.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

STEPS, PROMPTS, SAMPLES = 6, 2, 2
TRAIN = ["model.path=tiny", f"train.steps={STEPS}", f"rollout.prompts_per_step={PROMPTS}",
         f"rollout.samples_per_prompt={SAMPLES}", "rollout.max_new_tokens=8", "task.eval_size=4",
         "train.eval_max_new_tokens=8", "checkpoint.every=1", "run.deterministic=true", "run.progress=false",
         "optim.lr=1e-3"]
EVAL = ["model.path=tiny", "task=gsm8k", "limit=60", "n=0", "max_new_tokens=16", "batch_size=2"]


def opo(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "opo", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def weights(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "checkpoints").glob("step_*"))[-1]
    return load_file(str(last / "model.safetensors"))


def verify_run(run: Path, reference: dict[str, torch.Tensor]) -> list[str]:
    """What is wrong with a completed run directory (nothing: an empty list)."""
    problems = []
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # raises on a bad line
    trained = [r["step"] for r in rows if "reward/mean" in r]
    if trained != list(range(1, STEPS + 1)):
        problems.append(f"metrics.jsonl steps {trained}")
    samples = [json.loads(line)["step"] for line in (run / "samples.jsonl").read_text().splitlines()]
    if samples != sorted(samples) or Counter(samples) != {s: PROMPTS * SAMPLES for s in range(1, STEPS + 1)}:
        problems.append(f"samples.jsonl steps {Counter(samples)}")
    if list((run / "checkpoints").glob(".step_*")):
        problems.append("temporary checkpoint directories left")
    final = weights(run)
    if final.keys() != reference.keys() or any(not torch.equal(final[k], reference[k]) for k in final):
        problems.append("final weights differ from the uninterrupted run's")
    return problems


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """SIGKILL ``proc`` once ``ready()`` holds; False if it ended first."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.01)
    proc.wait()
    return False


def train_scenario(root: Path, rng: random.Random, reference: dict, counts: Counter, at_save: bool) -> list[str]:
    run = root / f"run{counts['scenarios']}"
    args = [*TRAIN, f"run.dir={run}"]
    ckpts = run / "checkpoints"
    first = True
    while True:
        proc = opo("train", *args, *([] if first else ["checkpoint.resume=true"]))
        started = time.time()
        kill = first or rng.random() < 0.5
        if kill and at_save:
            start_steps = len(list(ckpts.glob("step_*"))) if ckpts.exists() else 0
            killed = kill_when(proc, lambda: ckpts.exists() and any(ckpts.glob(".step_*"))
                               and len(list(ckpts.glob("step_*"))) >= start_steps)
        elif kill:
            t = rng.uniform(0.5, 12.0)
            killed = kill_when(proc, lambda: time.time() - started > t)
        else:
            killed = False
            proc.wait(timeout=300)
        counts["runs killed"] += killed
        counts["kills at a checkpoint save"] += killed and at_save
        if not first:
            counts["resumes"] += 1
        first = False
        if not killed:
            if proc.returncode != 0:
                return [f"exit {proc.returncode}: {proc.stderr.read()[-500:]}"]
            if (run / "summary.json").exists() and "after" in json.loads((run / "summary.json").read_text()):
                break
    problems = verify_run(run, reference)
    counts["runs verified"] += 1
    counts["log lines verified"] += sum(len((run / n).read_text().splitlines()) for n in ("metrics.jsonl",
                                                                                           "samples.jsonl"))
    counts["checkpoints verified"] += len(list(ckpts.glob("step_*")))
    return problems


def eval_scenario(root: Path, rng: random.Random, counts: Counter) -> list[str]:
    out = root / f"eval{counts['scenarios']}"
    proc = opo("eval", *EVAL, f"out_dir={out}")
    samples = out / "samples.jsonl"
    t = rng.uniform(1.0, 25.0)  # model load and setup take ~5-10 s: kills fall before and during sampling
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < t:
        time.sleep(0.05)
    interrupt = rng.random() < 0.5
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT if interrupt else signal.SIGKILL)
    proc.wait(timeout=120)
    lines = samples.read_text().split("\n") if samples.exists() else []
    complete = [json.loads(line) for line in lines[:-1]]  # the last piece may be cut by SIGKILL
    counts["eval samples verified"] += len(complete)
    if interrupt and proc.returncode in (130, 0):
        counts["evals interrupted"] += 1
        if not (out / "summary.json").exists():  # interrupted before the model was loaded
            return [] if not complete else ["interrupted eval wrote samples but no summary.json"]
        summary = json.loads((out / "summary.json").read_text())
        if proc.returncode == 130 and summary["metrics"].get("eval/n", 0) != len(complete):
            return [f"interrupted eval: summary counts {summary['metrics'].get('eval/n')}, file {len(complete)}"]
        return []
    counts["evals killed"] += proc.returncode == -signal.SIGKILL
    return [] if proc.returncode in (0, -signal.SIGKILL) else [f"eval exit {proc.returncode}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=600, help="seconds to spend")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    counts: Counter = Counter()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ref = opo("train", *TRAIN, f"run.dir={root / 'reference'}")
        if ref.wait() != 0:
            sys.exit(f"the uninterrupted reference run failed: {ref.stderr.read()}")
        reference = weights(root / "reference")
        t0 = time.time()
        while time.time() - t0 < args.budget:
            kind = rng.choice(["train", "save", "eval"])
            counts["scenarios"] += 1
            problems = (eval_scenario(root, rng, counts) if kind == "eval"
                        else train_scenario(root, rng, reference, counts, at_save=kind == "save"))
            failures += [f"{kind} #{counts['scenarios']}: {p}" for p in problems]
            print(f"{time.time() - t0:6.0f}s  {kind:<5} {'ok' if not problems else problems}", flush=True)
    print(f"\nbudget {args.budget:.0f} s, seed {args.seed}")
    for key in ("scenarios", "runs killed", "kills at a checkpoint save", "resumes", "runs verified",
                "checkpoints verified", "log lines verified", "evals killed", "evals interrupted",
                "eval samples verified"):
        print(f"  {key:<28} {counts[key]}")
    print(f"  {'failures':<28} {len(failures)}")
    for f in failures:
        print(f"    {f}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
