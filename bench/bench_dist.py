"""`opo train` on one process against `torchrun` on P processes (replicated, and FSDP-sharded), side by side.

All runs train the embedded SmolLM2-135M-Instruct on the default task with the same settings and seed
(no held-out evaluation, so only RL steps are timed). The single process uses the thread count
`opo train` picks (`run.threads=0`: it times 1 thread against all cores); each of the P
processes gets its share of the cores (cores / P threads), as `opo train` gives it under
torchrun. The configurations alternate, in a rotating order, for --rounds rounds; the first --warmup
steps of each run are left out. Prints each one's median step time (rank 0's, with its generate /
train split), the largest process's peak RSS, and the speedup over one process.

    .venv/bin/python bench/bench_dist.py                         # 1 vs 2 processes vs 2 with FSDP
    .venv/bin/python bench/bench_dist.py --nproc 2 --steps 4 --rounds 2 --out bench/results_dist.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs a command and prints the peak RSS (KiB) of its largest process, torchrun's workers included.
PEAK = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); " \
       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


def run(nproc: int, fsdp: bool, steps: int, settings: list[str]) -> tuple[list[dict], float]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench_dist_{nproc}_"))
    args = ["train", *settings, f"train.steps={steps}", f"run.dir={run_dir}", "train.eval_before=false",
            "task.eval_size=1", "train.eval_max_new_tokens=1", "run.progress=false", "train.shift_every=0",
            f"train.fsdp={str(fsdp).lower()}"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                "opo"] if nproc > 1 else [sys.executable, "-m", "opo"]
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", PEAK, *launcher, *args], check=True, capture_output=True, text=True)
    peak_mb = int(out.stdout.split()[-1]) / 1024
    print(f"  {name_of(nproc, fsdp)}: {steps} steps in {time.time() - t0:.0f} s, peak RSS {peak_mb:.0f} MB", flush=True)
    rows = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "time/step" in r]
    return rows, peak_mb


def name_of(nproc: int, fsdp: bool) -> str:
    return f"{nproc}proc" + ("_fsdp" if fsdp else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="steps of each run left out")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-fsdp", action="store_true", help="leave the FSDP configuration out")
    ap.add_argument("--out", help="write the results as JSON")
    ap.add_argument("settings", nargs="*", help="extra opo train key=value settings for all")
    a = ap.parse_args()
    configs = [(1, False), (a.nproc, False)] + ([] if a.no_fsdp else [(a.nproc, True)])
    rows: dict[str, list[dict]] = {name_of(*c): [] for c in configs}
    peaks: dict[str, list[float]] = {name_of(*c): [] for c in configs}
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}", flush=True)
        for nproc, fsdp in configs[r % len(configs):] + configs[: r % len(configs)]:  # rotate: machines drift
            got, peak = run(nproc, fsdp, a.steps, a.settings)
            rows[name_of(nproc, fsdp)] += got[a.warmup:]
            peaks[name_of(nproc, fsdp)].append(peak)
    result: dict = {"cores": os.cpu_count(), "settings": a.settings, "steps": a.steps, "warmup": a.warmup,
                    "rounds": a.rounds}
    for name, got in rows.items():
        result[name] = {k: statistics.median(r[k] for r in got)
                        for k in ("time/step", "time/generate", "time/train", "tokens/trained")}
        result[name]["peak_rss_mb"] = max(peaks[name])
        result[name]["steps_timed"] = len(got)
    one = result["1proc"]["time/step"]
    for name in rows:
        m = result[name]
        m["speedup"] = one / m["time/step"]
        print(f"{name:>10}: step {m['time/step']:.1f} s (generate {m['time/generate']:.1f} s, train "
              f"{m['time/train']:.1f} s), {m['tokens/trained']:.0f} trained tokens, peak RSS {m['peak_rss_mb']:.0f} MB "
              f"per process, speedup over 1 process {m['speedup']:.2f}x")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
