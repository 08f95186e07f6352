"""Where an opo RL step spends its time: torch.profiler tables for the rollout and the update.

    .venv/bin/python bench/profile_step.py                      # 4 prompts x 4 samples, 32 tokens
    .venv/bin/python bench/profile_step.py --size large --rows 25 rollout.precision=fp32

Extra arguments are config overrides. Runs one warm-up step, then profiles one step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_step import SIZES, opo_config  # noqa: E402

from opo.commands import train  # noqa: E402
from opo.run import setup  # noqa: E402
from opo.runtime import reuse_large_allocations  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="small")
    ap.add_argument("--rows", type=int, default=20, help="rows of each table")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    reuse_large_allocations()  # as `opo train`
    cfg = opo_config(*SIZES[args.size], args.overrides)
    run = setup(cfg, max_new_tokens=cfg.rollout.max_new_tokens)
    print(run.compute.describe())
    P = cfg.rollout.prompts_per_step
    train.rl_step(run, 0, 0)  # warm-up

    generate, update = run.engine.generate, train.policy_update
    tables = {}

    def profiled(name, fn):
        def wrapped(*a, **k):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                out = fn(*a, **k)
            tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
            return out
        return wrapped

    run.engine.generate = profiled("rollout", generate)
    train.policy_update = profiled("update", update)
    row, _ = train.rl_step(run, P, 1)
    print({k: round(v, 3) for k, v in row.items() if k.startswith(("time/", "tokens/"))})
    for name, table in tables.items():
        print(f"\n== {name} ==\n{table}")
    run.close()


if __name__ == "__main__":
    main()
