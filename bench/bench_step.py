"""One RL step: opo (exact on-policy OPO) vs TRL's GRPOTrainer, side by side, on this machine.

Both run the embedded SmolLM2-135M-Instruct on reasoning-gym chain_sum (2 terms, 1 digit), the
same prompts in the same order, the same seed, prompts per step, samples per prompt, max new
tokens and temperature 1. TRL is set to its closest equivalent of opo's update: beta=0 (no KL, no
reference model), num_iterations=1, loss_type="dapo" (token-mean over the whole batch, as opo's
default aggregation), scale_rewards="none" (no std division; the baseline is the group mean
instead of OPO's length-weighted mean), fp32 (TRL's CPU default), gradient checkpointing off
(faster for TRL at this size), one optimizer step per generation batch, backpropagating at most
16 completions at a time (gradient accumulation; 64 x 128 tokens in one fp32 TRL batch was
OOM-killed at 24 GB). opo runs its defaults as `opo train` does (precision `auto`: bf16 autocast
and a bf16 sampling copy where the CPU has native bf16, else fp32; eager attention; allocator
tuning). Both run with the same torch thread count: the one `opo train` picks on this machine
(--threads overrides it), so the ratio measures the libraries, not a thread setting. Each
engine runs in its own subprocess so peak RSS is its own; the two alternate, block by block, for
--rounds rounds. The first --warmup steps of each block warm caches and allocators up and are
left out. The training phase's achieved FLOP/s is compared with the matmul peak of the dtype it
computes in (bf16 where native, else fp32), measured in the same run at the same thread count.

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python bench/bench_step.py                       # both sizes
    .venv/bin/python bench/bench_step.py --sizes small --rounds 1 --steps 3 --rss-steps 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

SIZES = {"small": (4, 4, 32), "large": (8, 8, 128)}  # prompts, samples per prompt, max new tokens
BLOCKS = {"small": (5, 2), "large": (3, 1)}  # steps per block, warm-up steps left out (a TRL large step is ~150 s)
LR = 1e-5


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_gflops(dtype_name: str, n: int = 2048, reps: int = 10) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def opo_config(prompts: int, samples: int, tokens: int, overrides: tuple[str, ...] = ()):
    from opo.config import load_config

    return load_config(None, [
        f"rollout.prompts_per_step={prompts}", f"rollout.samples_per_prompt={samples}",
        f"rollout.max_new_tokens={tokens}", f"optim.lr={LR}", "run.progress=false", *overrides,
    ])


def worker_opo(prompts: int, samples: int, tokens: int, steps: int, start: int, threads: int) -> dict:
    from opo.commands.train import rl_step
    from opo.run import setup
    from opo.runtime import reuse_large_allocations

    reuse_large_allocations()  # what `opo train` does at start
    cfg = opo_config(prompts, samples, tokens, (f"run.threads={threads}",))
    run = setup(cfg, max_new_tokens=tokens)
    n_params = sum(p.numel() for p in run.model.parameters())
    rows, rss = [], []
    for i in range(steps):
        row, _ = rl_step(run, start + i * prompts, i)
        rows.append(row)
        rss.append(rss_mb())
    run.close()
    return {"rows": rows, "rss": rss, "peak_rss_mb": peak_rss_mb(), "params": n_params,
            "precision": run.compute.precision}


def worker_trl(prompts: int, samples: int, tokens: int, steps: int, start: int, threads: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from opo.models import embedded_model_dir
    from opo.tasks import build_task

    cfg = opo_config(prompts, samples, tokens)
    task = build_task(cfg.task)
    examples = [task.train_example(start + i) for i in range(prompts * steps)]
    data = Dataset.from_list([{"prompt": ex.messages, "index": i} for i, ex in enumerate(examples)])

    def reward(completions, index, **_):
        texts = [c[-1]["content"] for c in completions]
        return [g.reward for g in task.grade(texts, [examples[i] for i in index])]

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.rss, self.t0 = [], [], 0.0

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t0)
            self.rss.append(rss_mb())

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    path = embedded_model_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # One optimizer step per generation batch of prompts x samples, as opo; at most 16 completions
    # per backward, since 64 x 128 tokens in one fp32 TRL batch was OOM-killed at 24 GB here.
    micro = min(prompts * samples, 16)
    tok = AutoTokenizer.from_pretrained(path)
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=micro, gradient_accumulation_steps=prompts * samples // micro,
        steps_per_generation=prompts * samples // micro, num_generations=samples,
        max_completion_length=tokens, temperature=1.0, top_k=0, top_p=1.0, beta=0.0, num_iterations=1,
        loss_type="dapo", scale_rewards="none", learning_rate=LR, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0, max_steps=steps, logging_steps=1, report_to=[], use_cpu=True,
        bf16=False, gradient_checkpointing=False, save_strategy="no", shuffle_dataset=False, seed=0,
        disable_tqdm=True,
    )
    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok,
                          callbacks=[timer])
    trainer.train()
    return {"times": timer.times, "rss": timer.rss, "peak_rss_mb": peak_rss_mb()}


def worker_generate(prompts: int, samples: int, tokens: int, steps: int, start: int, threads: int) -> dict:
    """Rollout tokens/s: opo's engine (fp32, and bf16 where native) vs plain fp32 ``model.generate``
    (sdpa attention, as TRL loads it), same prompts and settings, alternating."""
    import torch
    from transformers import AutoModelForCausalLM

    from opo.tasks import encode
    from opo.models import embedded_model_dir, load_model, stop_token_ids
    from opo.rollout.hf import HFEngine
    from opo.runtime import native_bf16, reuse_large_allocations
    from opo.tasks import build_task

    reuse_large_allocations()
    torch.set_num_threads(threads)
    cfg = opo_config(prompts, samples, tokens)
    model, tok = load_model("embedded", attention=cfg.model.attention)
    plain = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    task = build_task(cfg.task)
    ids = encode(tok, [task.train_example(start + i) for i in range(prompts)])
    precisions = ("fp32", "bf16") if native_bf16() else ("fp32",)  # emulated bf16 is ~300x slower: not a contender
    engines = {p: HFEngine(model, stop_token_ids(model, tok), tok.pad_token_id, p, seed=0) for p in precisions}
    tok.padding_side = "left"
    enc = tok.pad({"input_ids": ids}, return_tensors="pt")
    out: dict[str, list[float]] = {f"opo_{p}": [] for p in precisions} | {"generate_fp32": []}
    for _ in range(steps):
        for precision, engine in engines.items():
            t0 = time.perf_counter()
            batch = engine.generate(ids, list(range(prompts)), samples, tokens, 1.0)
            out[f"opo_{precision}"].append(sum(len(r.completion) for r in batch.rollouts) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        with torch.no_grad():
            gen = plain.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=tokens,
                                 num_return_sequences=samples, pad_token_id=tok.pad_token_id)
        new = gen[:, enc.input_ids.shape[1]:]
        # count tokens up to and including the first end token, as the engine does
        finished = (new == tok.eos_token_id).int().cumsum(-1)
        n_tokens = int(((finished == 0) | ((finished == 1) & (new == tok.eos_token_id))).sum())
        out["generate_fp32"].append(n_tokens / (time.perf_counter() - t0))
    return out


WORKERS = {"opo": worker_opo, "trl": worker_trl, "generate": worker_generate}


def run_worker(kind: str, size: str, steps: int, start: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--size", size, "--steps", str(steps), "--start", str(start),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,large")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, help="steps per block (default: per size, BLOCKS)")
    ap.add_argument("--warmup", type=int, help="steps of each block left out of the medians (default: per size)")
    ap.add_argument("--out", default="bench/results.json")
    ap.add_argument("--worker", choices=list(WORKERS))
    ap.add_argument("--size", choices=list(SIZES))
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--rss-steps", type=int, default=20, help="opo steps of the RSS-growth run (small size; 0: skip)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of every worker (0: what opo train picks)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](*SIZES[args.size], args.steps or 3, args.start, args.threads)))
        return

    import torch

    from opo.runtime import native_bf16, pick_threads

    threads = pick_threads(args.threads)
    # emulated bf16 (no native support) runs a 2048^3 matmul in minutes: measured only where native
    peak = {d: matmul_peak_gflops(d) for d in ("float32", "bfloat16") if d == "float32" or native_bf16()}
    print(f"{threads} thread(s); native bf16: {native_bf16()}; cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print("matmul 2048x2048: " + ", ".join(f"{d} {g:.1f} GFLOP/s" for d, g in peak.items()))
    results = {"threads": threads, "native_bf16": native_bf16(), "peak_gflops": peak, "sizes": {}}
    for size in args.sizes.split(","):
        p, k, t = SIZES[size]
        steps, warmup = args.steps or BLOCKS[size][0], args.warmup if args.warmup is not None else BLOCKS[size][1]
        opo_rows, opo_rss, trl_times, trl_rss, opo_peak, trl_peak = [], [], [], [], [], []
        for r in range(args.rounds):
            start = r * steps * p  # each round sees new prompts; both engines see the same ones
            o = run_worker("opo", size, steps, start, threads)
            opo_rows += o["rows"][warmup:]
            opo_rss.append(o["rss"])
            opo_peak.append(o["peak_rss_mb"])
            n_params = o["params"]
            tr = run_worker("trl", size, steps, start, threads)
            trl_times += tr["times"][warmup:]
            trl_rss.append(tr["rss"])
            trl_peak.append(tr["peak_rss_mb"])
        gen = run_worker("generate", size, 3, 0, threads)
        opo_step = statistics.median(r["time/step"] for r in opo_rows)
        trl_step = statistics.median(trl_times)
        t_train = statistics.median(r["time/train"] for r in opo_rows)
        trained = statistics.median(r["tokens/trained"] for r in opo_rows)
        train_gflops = 6 * n_params * trained / t_train / 1e9
        train_peak = peak["bfloat16" if o["precision"] == "bf16" else "float32"]
        res = {
            "prompts": p, "samples": k, "max_new_tokens": t,
            "opo_step_s": opo_step, "trl_step_s": trl_step, "ratio_opo_over_trl": opo_step / trl_step,
            "opo_generate_s": statistics.median(r["time/generate"] for r in opo_rows),
            "opo_reward_s": statistics.median(r["time/reward"] for r in opo_rows),
            "opo_train_s": t_train,
            "opo_rollout_tok_per_s": statistics.median(r["tokens/generate_per_s"] for r in opo_rows),
            "opo_train_tok_per_s": statistics.median(r["tokens/train_per_s"] for r in opo_rows),
            "opo_precision": o["precision"], "opo_train_gflops": train_gflops,
            "opo_train_fraction_of_peak": train_gflops / train_peak,
            "rollout_tok_per_s_plain_generate_fp32": statistics.median(gen["generate_fp32"]),
            "opo_peak_rss_mb": max(opo_peak), "trl_peak_rss_mb": max(trl_peak),
            "opo_rss_per_step_mb": opo_rss, "trl_rss_per_step_mb": trl_rss,
            "logprob_gap_mean_abs": statistics.median(r["logprob_gap/mean_abs"] for r in opo_rows),
        }
        for name in gen:
            if name.startswith("opo_"):
                precision = name.removeprefix("opo_")
                res[f"rollout_tok_per_s_opo_engine_{precision}"] = statistics.median(gen[name])
                res[f"rollout_speedup_{precision}_vs_generate"] = (
                    res[f"rollout_tok_per_s_opo_engine_{precision}"] / res["rollout_tok_per_s_plain_generate_fp32"])
        results["sizes"][size] = res
        print(f"\n[{size}] {p} prompts x {k} samples, <= {t} new tokens")
        print(f"  step time  opo {opo_step:.2f} s   TRL {trl_step:.2f} s   ratio opo/TRL {opo_step / trl_step:.3f}")
        print(f"  opo phases generate {res['opo_generate_s']:.2f} s, reward {res['opo_reward_s']:.3f} s, "
              f"train {t_train:.2f} s")
        print(f"  opo train ({o['precision']}) {res['opo_train_tok_per_s']:.0f} tok/s = {train_gflops:.1f} GFLOP/s "
              f"= {res['opo_train_fraction_of_peak']:.0%} of the {o['precision']} matmul peak")
        engines = ", ".join(f"{p} {res[f'rollout_tok_per_s_opo_engine_{p}']:.0f} tok/s "
                            f"({res[f'rollout_speedup_{p}_vs_generate']:.2f}x)"
                            for p in ("bf16", "fp32") if f"rollout_tok_per_s_opo_engine_{p}" in res)
        print(f"  rollout: opo engine {engines}; plain generate fp32 {res['rollout_tok_per_s_plain_generate_fp32']:.0f} tok/s")
        print(f"  peak RSS opo {res['opo_peak_rss_mb']:.0f} MB, TRL {res['trl_peak_rss_mb']:.0f} MB")
    if args.rss_steps:
        rss = run_worker("opo", "small", args.rss_steps, 0, threads)["rss"]
        growth = max(rss[1:]) / rss[0] - 1
        results["rss_growth"] = {"steps": args.rss_steps, "rss_mb": rss, "growth_after_first_step": growth}
        print(f"\nRSS over {args.rss_steps} opo steps (small): after step 1 {rss[0]:.0f} MB, "
              f"max after {max(rss[1:]):.0f} MB, growth {growth:+.1%}")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
