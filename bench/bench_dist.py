"""`opo train` on one process against `torchrun` on P processes, side by side, on this machine.

Both train the embedded SmolLM2-135M-Instruct on the default task with the same settings and seed
(no held-out evaluation, so only RL steps are timed). The single process uses the thread count
`opo train` picks (`train.threads=0`: it times 1 thread against all cores); each of the P
processes gets its share of the cores (cores / P threads), as `opo train` gives it under
torchrun. The two alternate for --rounds rounds; the first --warmup steps of each run are left
out. Prints the median step time (and its generate / train split) of each and their ratio.

    .venv/bin/python bench/bench_dist.py                         # 1 vs 2 processes, default batch
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


def run(nproc: int, steps: int, settings: list[str]) -> list[dict]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench_dist_{nproc}_"))
    args = ["train", *settings, f"train.steps={steps}", f"train.run_dir={run_dir}", "train.eval_before=false",
            "task.eval_size=1", "train.eval_max_new_tokens=1", "train.progress=false", "train.shift_every=0"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                "opo"] if nproc > 1 else [sys.executable, "-m", "opo"]
    t0 = time.time()
    subprocess.run(launcher + args, check=True, stdout=subprocess.DEVNULL)
    print(f"  {nproc} process(es): {steps} steps in {time.time() - t0:.0f} s", flush=True)
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "time/step" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="steps of each run left out")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", help="write the results as JSON")
    ap.add_argument("settings", nargs="*", help="extra opo train key=value settings for both")
    a = ap.parse_args()
    times: dict[int, list[dict]] = {1: [], a.nproc: []}
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}", flush=True)
        for nproc in (1, a.nproc) if r % 2 == 0 else (a.nproc, 1):  # alternate the order: shared machines drift
            times[nproc] += run(nproc, a.steps, a.settings)[a.warmup:]
    result = {"cores": os.cpu_count(), "settings": a.settings, "steps_timed": {str(k): len(v) for k, v in times.items()}}
    for nproc, rows in times.items():
        result[f"{nproc}proc"] = {k: statistics.median(r[k] for r in rows)
                                  for k in ("time/step", "time/generate", "time/train", "tokens/trained")}
    one, many = result["1proc"], result[f"{a.nproc}proc"]
    result["speedup"] = one["time/step"] / many["time/step"]
    for nproc in (1, a.nproc):
        m = result[f"{nproc}proc"]
        print(f"{nproc} process(es): step {m['time/step']:.1f} s (generate {m['time/generate']:.1f} s, "
              f"train {m['time/train']:.1f} s), {m['tokens/trained']:.0f} trained tokens")
    print(f"speedup of {a.nproc} processes over 1: {result['speedup']:.2f}x")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
