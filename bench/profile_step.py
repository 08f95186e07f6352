"""Where an opo RL step spends its time: torch.profiler tables for the rollout and the update.

    .venv/bin/python bench/profile_step.py                      # 4 prompts x 4 samples, 32 tokens
    .venv/bin/python bench/profile_step.py --size large --rows 25 rollout.precision=fp32

Extra arguments are config overrides. Runs one warm-up step, then profiles one step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_step import SIZES, opo_config  # noqa: E402

from opo import trainer  # noqa: E402
from opo.models import load_model, stop_token_ids  # noqa: E402
from opo.rollout.hf import HFEngine  # noqa: E402
from opo.runtime import reuse_large_allocations  # noqa: E402
from opo.tasks import build_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="small")
    ap.add_argument("--rows", type=int, default=20, help="rows of each table")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    reuse_large_allocations()  # as `opo train`
    cfg = opo_config(*SIZES[args.size], args.overrides)
    print(trainer.configure_compute(cfg))
    torch.manual_seed(0)
    model, tok = load_model("embedded", attention=cfg.model.attention)
    task = build_task(cfg.task)
    engine = HFEngine(model, stop_token_ids(model, tok), tok.pad_token_id, cfg.rollout.precision, seed=0)
    optimizer = trainer.build_optimizer(model, cfg)
    shuffle = torch.Generator().manual_seed(1)
    P = cfg.rollout.prompts_per_step
    trainer.rl_step(cfg, model, tok, engine, task, optimizer, None, shuffle, 0, 0)  # warm-up

    generate, update = engine.generate, trainer.policy_update
    tables = {}

    def profiled(name, fn):
        def run(*a, **k):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                out = fn(*a, **k)
            tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
            return out
        return run

    engine.generate = profiled("rollout", generate)
    trainer.policy_update = profiled("update", update)
    row, _ = trainer.rl_step(cfg, model, tok, engine, task, optimizer, None, shuffle, P, 1)
    print({k: round(v, 3) for k, v in row.items() if k.startswith(("time/", "tokens/"))})
    for name, table in tables.items():
        print(f"\n== {name} ==\n{table}")


if __name__ == "__main__":
    main()
