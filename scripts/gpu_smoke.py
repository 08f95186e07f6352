"""Summarise the runs of scripts/gpu_smoke.sh: one table and ``<out>/summary.json``.

    python scripts/gpu_smoke.py runs/gpu-smoke embedded-hf embedded-vllm [hub-hf hub-vllm]

Each name is an `opo train` run directory under ``<out>``; ``<out>/<name>.gpu_mem`` (optional) holds
`nvidia-smi --query-gpu=memory.used` samples in MiB, one a line, the first taken before the run
started. Per run: mean step time without step 1 (warm-up), rollout tokens/s over those steps,
peak GPU memory (device-wide, other processes included; vLLM reserves `vllm.memory` of the GPU up
front), the sampler/trainer log-prob gap and held-out accuracy before/after. A run without
``summary.json`` counts as failed. Exit status 1 when any run failed.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Optional


def gpu_memory(path: Path) -> dict[str, Optional[float]]:
    """Peak and pre-run samples of nvidia-smi's memory.used (MiB)."""
    if not path.exists():
        return {"gpu_mem_peak_mib": None, "gpu_mem_before_mib": None, "gpu_mem_peak_over_before_mib": None}
    samples = [float(line) for line in path.read_text().split() if line.replace(".", "", 1).isdigit()]
    if not samples:
        return {"gpu_mem_peak_mib": None, "gpu_mem_before_mib": None, "gpu_mem_peak_over_before_mib": None}
    return {"gpu_mem_peak_mib": max(samples), "gpu_mem_before_mib": samples[0],
            "gpu_mem_peak_over_before_mib": max(samples) - samples[0]}


def summarise(run_dir: Path, mem: Path) -> dict[str, Any]:
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    steps = [r for r in rows if "time/step" in r]  # training steps; the other rows are held-out evaluations
    timed = [r for r in steps if r["step"] > 1] or steps  # step 1 warms up (allocator, kernels, CUDA graphs)
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    out: dict[str, Any] = {"status": "ok" if "after" in summary else "failed", "steps": len(steps),
                           "compute": summary.get("compute"), "wall_time_s": summary.get("wall_time_s")}
    if timed:
        gen_s = sum(r["time/generate"] for r in timed)
        out |= {
            "step_s_mean": statistics.mean(r["time/step"] for r in timed),
            "generate_s_mean": gen_s / len(timed),
            "train_s_mean": statistics.mean(r["time/train"] for r in timed),
            "rollout_tok_per_s": sum(r["tokens/generated"] for r in timed) / gen_s,
            "length_mean": statistics.mean(r["length/mean"] for r in timed),
            "logprob_gap_mean_abs": statistics.mean(r["logprob_gap/mean_abs"] for r in steps),
            "logprob_gap_max_abs": max(r["logprob_gap/max_abs"] for r in steps),
            "logprob_gap_over_threshold": statistics.mean(r["logprob_gap/over_threshold"] for r in steps),
            "reward_mean": statistics.mean(r["reward/mean"] for r in steps),
        }
    for when in ("before", "after"):
        out[f"accuracy_{when}"] = summary.get(when, {}).get("eval/accuracy")
    return out | gpu_memory(mem)


def fmt(v: Any, spec: str) -> str:
    """``v`` formatted with ``spec`` (e.g. ``8.2f``), or a dash of the same width."""
    return format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out, names = Path(argv[0]), argv[1:]
    runs = {name: summarise(out / name, out / f"{name}.gpu_mem") for name in names}
    print(f"{'run':<16} {'status':<7} {'step s':>7} {'tok/s':>8} {'peak MiB':>9} {'gap mean':>9} {'gap max':>8} "
          f"{'>thr':>6} {'acc before':>10} {'acc after':>9}")
    for name, r in runs.items():
        print(f"{name:<16} {r['status']:<7} {fmt(r.get('step_s_mean'), '7.2f')} {fmt(r.get('rollout_tok_per_s'), '8.0f')} "
              f"{fmt(r['gpu_mem_peak_mib'], '9.0f')} {fmt(r.get('logprob_gap_mean_abs'), '9.2e')} "
              f"{fmt(r.get('logprob_gap_max_abs'), '8.2e')} {fmt(r.get('logprob_gap_over_threshold'), '6.3f')} "
              f"{fmt(r['accuracy_before'], '10.1%')} {fmt(r['accuracy_after'], '9.1%')}")
    (out / "summary.json").write_text(json.dumps(runs, indent=2))
    print(f"wrote {out / 'summary.json'}")
    failed = [name for name, r in runs.items() if r["status"] != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)} (see {out}/<name>.log)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
