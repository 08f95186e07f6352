"""LoRA against full fine-tuning, side by side: step time, peak memory, optimizer state, checkpoint size.

Each configuration runs the default `opo train` (embedded SmolLM2-135M-Instruct, chain_sum, 8 prompts x
8 samples, 24 new tokens) for --steps steps in its own subprocess, with `train.eval_before=false` and
a 4-problem held-out set, and one checkpoint at the end. Per configuration it reports:

- time/step, time/generate and time/train (the update) from metrics.jsonl, mean over the steps after
  the first --warmup (which pay one-time costs);
- peak resident memory of the training process (``ru_maxrss`` from ``os.wait4``; the grader's worker
  processes are its children and count only if one of them is larger, which they are not);
- the optimizer state (AdamW's two moments) as the checkpoint holds it: its tensors' bytes;
- the checkpoint's weights on disk: the full model, or the adapter alone.

Configurations alternate in rounds (--rounds), the order rotating each round. Run it alone on the
machine: two torch jobs on 2 cores slow each other far more than 2x.

    .venv/bin/python bench/bench_lora.py                          # full, LoRA r16 and r64, 1 round
    .venv/bin/python bench/bench_lora.py --rounds 2 --steps 4
    .venv/bin/python bench/bench_lora.py --configs full lora-r16 --extra train.micro_batch_tokens=1024 \
        --out bench/results_lora_mb1024.json              # the update's transient peak made 4x smaller
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"full": [], "lora-r16": ["model.lora.rank=16", "optim.lr=1e-4"],
           "lora-r64": ["model.lora.rank=64", "optim.lr=1e-4"]}


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def native_bf16() -> bool:
    with open("/proc/cpuinfo") as f:
        return "avx512_bf16" in f.read()


def run_config(name: str, settings: list[str], steps: int, threads: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-lora-{name}-") as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "opo", "train", *settings, f"train.steps={steps}", "train.eval_before=false",
               "task.eval_size=4", f"run.threads={threads}", "run.progress=false", f"run.dir={run}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{name}: opo train failed:\n{out[-3000:]}")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "time/step" in r][warmup:]
        ckpt = run / "checkpoints" / f"step_{steps:07d}"
        state = torch.load(ckpt / "trainer_state.pt", weights_only=True)["optimizer"]["state"]
        optimizer_bytes = sum(t.numel() * t.element_size() for s in state.values() for t in s.values()
                              if torch.is_tensor(t) and t.dim() > 0)
        summary = json.loads((run / "summary.json").read_text())
        return {
            "time/step": statistics.mean(r["time/step"] for r in rows),
            "time/generate": statistics.mean(r["time/generate"] for r in rows),
            "time/train": statistics.mean(r["time/train"] for r in rows),
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "optimizer_state_mb": optimizer_bytes / 2**20,
            "checkpoint_weights_mb": sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 2**20,
            "trainable_params": summary["params/trainable"], "total_params": summary["params/total"],
            "steps_timed": len(rows), "wall_s": time.time() - started,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--extra", nargs="*", default=[], help="settings added to every configuration, e.g. "
                   "train.micro_batch_tokens=1024 (a smaller update peak)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results_lora.json"))
    args = p.parse_args()
    runs: dict[str, list[dict]] = {c: [] for c in args.configs}
    for r in range(args.rounds):
        order = args.configs[r % len(args.configs):] + args.configs[: r % len(args.configs)]
        for name in order:
            result = run_config(name, CONFIGS[name] + args.extra, args.steps, args.threads, args.warmup)
            runs[name].append(result)
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()), flush=True)
    means = {c: {k: statistics.mean(x[k] for x in rs) for k in rs[0]} for c, rs in runs.items()}
    base = means.get("full")
    print(f"\n{'config':<10} {'step s':>8} {'gen s':>7} {'train s':>8} {'peak MB':>8} {'optim MB':>9} "
          f"{'ckpt MB':>8} {'trainable':>11}")
    for c, m in means.items():
        print(f"{c:<10} {m['time/step']:>8.1f} {m['time/generate']:>7.1f} {m['time/train']:>8.1f} "
              f"{m['peak_rss_mb']:>8.0f} {m['optimizer_state_mb']:>9.1f} {m['checkpoint_weights_mb']:>8.1f} "
              f"{m['trainable_params']:>11,.0f}")
    if base:
        print("\nratios to full fine-tuning (LoRA / full):")
        for c, m in means.items():
            if c != "full":
                print(f"  {c}: step {m['time/step'] / base['time/step']:.2f}x, update "
                      f"{m['time/train'] / base['time/train']:.2f}x, peak memory "
                      f"{m['peak_rss_mb'] / base['peak_rss_mb']:.2f}x, optimizer state "
                      f"{m['optimizer_state_mb'] / base['optimizer_state_mb']:.4f}x, checkpoint weights "
                      f"{m['checkpoint_weights_mb'] / base['checkpoint_weights_mb']:.4f}x")
    record = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "native_bf16": native_bf16(),
                          "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")},
              "args": vars(args), "runs": runs, "means": means}
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
