"""The RL loop: sample, score, advantage, update, log, checkpoint. Nothing else.

Each step (OPO, Hao et al. 2025, arXiv 2505.23585):
  1. take the next P prompts of the task and sample K completions each from the *current* policy;
  2. score every completion with the task's verifiable reward;
  3. turn rewards into token advantages (default ``opo``: A_i = r_i - sum_j l_j r_j / sum_j l_j);
  4. one optimizer step on the policy-gradient loss over the whole batch (exact on-policy: no
     old-log-prob pass, no reference model, no KL, no entropy bonus, no clipping to fire).
Off-policy mini-batches/epochs, KL and entropy terms exist only for comparison, behind the config.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from tqdm import tqdm

from opo import checkpoint, rundir
from opo.config import Config, ConfigError
from opo.distributed import Dist, local_world_size, sampling_seed
from opo.distributed import setup as setup_distributed
from opo.distributed import teardown as teardown_distributed
from opo.errors import TrainingAborted
from opo.evaluate import decode, encode, evaluate
from opo.metrics import JsonlLogger, repetition_metrics, rollout_metrics
from opo.models import load_model, stop_token_ids
from opo.rollout.base import RolloutBatch
from opo.rollout.hf import HFEngine
from opo.runtime import StopOnSignal, pick_threads, resolve_precisions
from opo.tasks import Task, build_task, limit_prompt_length
from opo.update import StepData, policy_update


def run_dir_of(cfg: Config, d: Dist) -> Path:
    if cfg.checkpoint.resume and "{time}" in cfg.train.run_dir:
        raise ConfigError("checkpoint.resume=true needs an explicit train.run_dir (the run to continue)")
    # rank 0's clock names the run: processes started a second apart must share one directory
    return Path(d.broadcast(cfg.train.run_dir.replace("{time}", time.strftime("%Y%m%d-%H%M%S"))))


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    # fused: one kernel per parameter instead of a chain of foreach passes (~3x faster step on CPU)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                             fused=True)


def configure_compute(cfg: Config, d: Dist = Dist()) -> str:
    """Resolve ``auto`` precisions for this CPU and set the thread count; returns a line saying what was chosen."""
    cfg.model.precision, cfg.rollout.precision = resolve_precisions(cfg.model.precision, cfg.rollout.precision)
    threads = cfg.train.threads
    if not threads and cfg.train.deterministic:
        threads = 1  # a timed choice could differ between a run and its resume
    elif not threads and d.world > 1:  # processes on one machine share its cores; timing them would be noise
        threads = max(1, (os.cpu_count() or 1) // local_world_size())
    threads = pick_threads(threads)
    cfg.train.threads = threads
    return (f"compute: {cfg.model.precision} training, {cfg.rollout.precision} sampling, "
            f"{threads} thread{'s' if threads > 1 else ''}" + (f" x {d.world} processes" if d.world > 1 else "")
            + (", FSDP" if d.fsdp else " (train.fsdp: one process, nothing to shard)" if cfg.train.fsdp else ""))


def train(cfg: Config) -> dict[str, Any]:
    """Run ``cfg.train.steps`` RL steps; returns the summary (held-out accuracy before/after, timings).

    Under ``torchrun`` every process runs this same loop on its share of each step's prompts
    (see :mod:`opo.distributed`); rank 0 alone logs, evaluates and writes checkpoints.
    """
    d = setup_distributed(cfg.train.fsdp)
    try:
        with contextlib.ExitStack() as held:  # the run directory's lock, released on any exit
            return _train(cfg, d, held)
    finally:
        teardown_distributed(d)


def _train(cfg: Config, d: Dist, held: contextlib.ExitStack) -> dict[str, Any]:
    started = time.time()
    say = print if d.main else _silent
    if cfg.rollout.prompts_per_step < d.world:
        raise ConfigError(f"rollout.prompts_per_step ({cfg.rollout.prompts_per_step}) must be at least the number of "
                          f"processes ({d.world}): each process samples whole prompt groups")
    run_dir = run_dir_of(cfg, d)
    _claim(run_dir, cfg, d, held)
    ckpt_root = run_dir / "checkpoints"
    resume_from = checkpoint.latest(ckpt_root) if cfg.checkpoint.resume else None
    if cfg.checkpoint.resume and resume_from is None:
        say(f"resume: no complete checkpoint in {ckpt_root}; starting from step 0")

    say(configure_compute(cfg, d))
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    m = cfg.model
    model, tok = load_model(str(resume_from) if resume_from else m.path, m.trust_remote_code, cfg.train.seed, m.attention)
    d.broadcast_parameters(model)
    # the sampler's weights are a full copy when the policy's are sharded, so build it first
    engine = HFEngine(model, stop_token_ids(model, tok), tok.pad_token_id, cfg.rollout.precision, separate=d.fsdp)
    policy = d.shard(model)  # the model itself, or its FSDP root
    ref_model = None
    if cfg.algo.kl_coef > 0:  # the reference is the initial policy, also after a resume
        ref_model = load_model(m.path, m.trust_remote_code, cfg.train.seed, m.attention)[0].requires_grad_(False)
        d.broadcast_parameters(ref_model)
    task = build_task(cfg.task)
    # one check for both uses of a prompt: training rollouts and held-out evaluation
    limit_prompt_length(task, tok, model, max(cfg.rollout.max_new_tokens, cfg.train.eval_max_new_tokens))
    optimizer = build_optimizer(model, cfg)
    warmup = cfg.optim.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    shuffle = torch.Generator().manual_seed(cfg.train.seed + 1)  # off-policy mini-batch order

    start_step, data_pos, summary = 0, 0, {}
    if resume_from is not None:
        state = checkpoint.load_state(resume_from)
        checkpoint.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        shuffle.set_state(state["shuffle"])
        start_step, data_pos, summary = state["step"], state["data_pos"], json.loads(state["summary"])
        if start_step >= cfg.train.steps:
            raise ConfigError(
                f"resume: the checkpoint {resume_from} is at step {start_step} and train.steps={cfg.train.steps}: "
                "nothing to train; raise train.steps to continue"
            )
        say(f"resume: continuing from {resume_from} (step {start_step})")
    if cfg.checkpoint.resume and d.main:  # rows after the checkpoint (all, without one) will be written again
        for name in ("metrics.jsonl", "samples.jsonl"):
            rundir.truncate_log(run_dir / name, start_step if resume_from is not None else -1)
    summary["data/skipped_rows"] = task.skipped_rows
    log = samples_log = None
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        log = JsonlLogger(run_dir / "metrics.jsonl", run_dir / "tensorboard" if cfg.train.tensorboard else None)
        samples_log = JsonlLogger(run_dir / "samples.jsonl")

    def held_out() -> dict[str, float]:  # every process evaluates its share of the problems
        t0 = time.time()
        ks = tuple(k for k in cfg.train.eval_k if k <= cfg.train.eval_n)
        # Evaluation samples from its own seeded stream; training reseeds its sampler every step, so
        # whether and how often evaluation runs never changes the training rollouts.
        engine.generator.manual_seed(cfg.train.seed + 10_000 + d.rank)
        result, _ = evaluate(engine, tok, task, n=cfg.train.eval_n, ks=ks, temperature=cfg.train.eval_temperature,
                             max_new_tokens=cfg.train.eval_max_new_tokens,
                             repetition=(cfg.repetition.n, cfg.repetition.min_count), dist=d)
        result["time/eval"] = time.time() - t0
        return result

    if start_step == 0 and cfg.train.eval_before:
        summary["before"] = held_out()
        if d.main:
            log.log({"step": 0, **summary["before"]})
        say(f"held-out accuracy before training: {summary['before']['eval/accuracy']:.1%} "
            f"({int(summary['before']['eval/n'])} problems, greedy)")

    P = cfg.rollout.prompts_per_step
    bad_steps = 0  # consecutive steps whose every update was skipped for a non-finite gradient
    bar = tqdm(range(start_step, cfg.train.steps), initial=start_step, total=cfg.train.steps,
               desc="opo train", disable=not (cfg.train.progress and d.main), dynamic_ncols=True)
    with StopOnSignal() as stop:  # SIGTERM/SIGINT: finish the step, checkpoint, exit cleanly
        for step in bar:
            shift = bool(cfg.train.shift_every) and (step + 1) % cfg.train.shift_every == 0
            row, samples = rl_step(cfg, policy, tok, engine, task, optimizer, ref_model, shuffle, data_pos, step,
                                   shift, d)
            scheduler.step()
            data_pos += P
            row = {"step": step + 1, **row, "lr": scheduler.get_last_lr()[0]}
            if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
                row.update(held_out())  # logged with the step's row
            if d.main:
                log.log(row)
                for sample in samples:
                    samples_log.log({"step": step + 1, **sample})
            bad_steps = bad_steps + 1 if row["optimizer_steps"] == 0 else 0  # the same on every process
            if bad_steps >= cfg.train.max_bad_steps:
                bar.close()
                raise TrainingAborted(
                    f"step {step + 1}: the gradient was NaN/inf in {bad_steps} consecutive steps (train.max_bad_steps="
                    f"{cfg.train.max_bad_steps}); no update was applied in those steps and the last checkpoint in "
                    f"{ckpt_root} is unchanged. Their samples are in {run_dir / 'samples.jsonl'}. "
                    "Try a lower optim.lr or model.precision=fp32."
                )
            bar.set_postfix(reward=f"{row['reward/mean']:.2f}", step_s=f"{row['time/step']:.1f}")
            if d.main:
                (tqdm.write if cfg.train.progress else print)(_console_line(row))

            stopping = d.any(stop.requested is not None)  # a signal to any process stops all after this step
            every = cfg.checkpoint.every
            if (every and (step + 1) % every == 0) or step + 1 == cfg.train.steps or stopping:
                # gathered from the shards under FSDP, where every process takes part; else rank 0's own
                weights = d.model_state(model)
                optimizer_state = checkpoint.optimizer_state(model, optimizer) if d.main or d.fsdp else None
                if d.main:
                    state = {
                        "step": step + 1, "data_pos": data_pos, "optimizer": optimizer_state,
                        "scheduler": scheduler.state_dict(), "rng": checkpoint.rng_state(),
                        "shuffle": shuffle.get_state(), "summary": json.dumps(summary),
                    }
                    checkpoint.save(ckpt_root, step + 1, model, tok, state, cfg.to_dict(), cfg.checkpoint.keep,
                                    weights)
                d.barrier()  # no process moves on (or exits) before the checkpoint is complete
            if stopping:
                summary["stopped"] = stop.requested or "SIGTERM"
                say(f"{summary['stopped']}: stopped after step {step + 1} with a checkpoint; continue with "
                    f"'opo train checkpoint.resume=true train.run_dir={run_dir}' (and the same settings)")
                break
    bar.close()
    if "stopped" in summary:
        task.close()
        if d.main:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    summary["after"] = held_out()
    if d.main:
        log.log({"step": cfg.train.steps, **summary["after"]})
    task.close()
    summary["wall_time_s"] = time.time() - started
    summary["run_dir"] = str(run_dir)
    if not d.main:
        return summary
    if "before" in summary:
        b, a = summary["before"]["eval/accuracy"], summary["after"]["eval/accuracy"]
        print(f"held-out accuracy: before {b:.1%} -> after {a:.1%} ({100 * (a - b):+.1f} points)")
    else:
        print(f"held-out accuracy after training: {summary['after']['eval/accuracy']:.1%}")
    print(f"wall time {summary['wall_time_s'] / 60:.1f} min; run directory {run_dir}")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _claim(run_dir: Path, cfg: Config, d: Dist, held: contextlib.ExitStack) -> None:
    """Lock ``run_dir`` for the run (rank 0, one lock per job) and refuse to mix two runs in it; a
    refusal stops every process with rank 0's message, not at a later collective."""
    refusal = None
    if d.main:
        try:
            held.enter_context(rundir.RunDirLock(run_dir))
            rundir.prepare(run_dir, cfg.checkpoint.resume, cfg.train.overwrite)
        except ConfigError as e:
            refusal = str(e)
    refusal = d.broadcast(refusal)
    if refusal:
        raise ConfigError(refusal)


def _silent(*args: Any, **kwargs: Any) -> None:
    """``print`` on processes other than rank 0."""


def rl_step(
    cfg: Config,
    model: torch.nn.Module,
    tok: Any,
    engine: HFEngine,
    task: Task,
    optimizer: torch.optim.Optimizer,
    ref_model: Optional[torch.nn.Module],
    shuffle: torch.Generator,
    data_pos: int,
    step: int,
    measure_shift: bool = False,
    d: Dist = Dist(),
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """RL step ``step`` on the prompts at ``data_pos``: metrics and the step's samples (``measure_shift``:
    also the policy shift of the update, at the cost of one forward pass). Under torch.distributed
    this process samples and grades its share of the prompts; the rest of the step sees the global batch."""
    P, K = cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt
    t_step = time.time()
    # 1. Sample K completions per prompt from the current weights.
    groups = [data_pos + i for i in d.share(P)]  # a group is named by its data position
    examples = {g: task.train_example(g) for g in groups}
    engine.generator.manual_seed(sampling_seed(cfg.train.seed, step, d.rank))
    batch = engine.generate(encode(tok, list(examples.values())), groups, K, cfg.rollout.max_new_tokens,
                            cfg.rollout.temperature)
    t_gen = time.time() - t_step

    # 2. Verifiable rewards.
    t0 = time.time()
    texts = [decode(tok, r.completion) for r in batch.rollouts]
    graded = task.grade(texts, [examples[r.group] for r in batch.rollouts])
    t_reward = time.time() - t0
    # Every process gets the whole batch (token ids and rewards, a few KB), in data order.
    scored = d.gather(list(zip(batch.rollouts, texts, graded)))
    batch = RolloutBatch([r for r, _, _ in scored])
    texts, graded = [t for _, t, _ in scored], [g for _, _, g in scored]
    truncated = cfg.truncated_reward()  # a cut-off completion: None grades it as it is
    scores = [truncated if truncated is not None and r.finish == "length" else g.reward
              for r, g in zip(batch.rollouts, graded)]
    rewards = torch.tensor(scores)  # (N,)

    # 3. Advantages (registry, inside StepData.from_rollouts), 4. one on-policy update.
    t0 = time.time()
    data = StepData.from_rollouts(batch, rewards, cfg.algo.advantage, cfg.algo.advantage_params, tok.pad_token_id)
    update = policy_update(model, optimizer, cfg, data, ref_model, shuffle, measure_shift, d)
    engine.sync_weights()
    t_train = time.time() - t0

    gen_tokens = float(data.mask.sum())
    trained_tokens = gen_tokens + sum(len(p) for p in data.prompts)  # shared prompts count once
    row = {
        **rollout_metrics(rewards, data.advantages, data.mask, batch.group_ids(),
                          [r.finish for r in batch.rollouts]),
        **update,
        **repetition_metrics([r.completion for r in batch.rollouts], cfg.repetition.n, cfg.repetition.min_count),
        "reward/no_answer": sum(g.status == "no_answer" for g in graded) / len(graded),
        "reward/grader_failures": float(sum(g.status in ("timeout", "error") for g in graded)),
        "reward/errors": float(sum(g.status == "error" for g in graded)),
        "reward/timeouts": float(sum(g.status == "timeout" for g in graded)),
        "time/generate": t_gen, "time/reward": t_reward, "time/train": t_train,
        "time/step": time.time() - t_step,
        "tokens/generated": gen_tokens, "tokens/trained": trained_tokens,
        "tokens/generate_per_s": gen_tokens / t_gen, "tokens/train_per_s": trained_tokens / t_train,
    }
    samples = [{"group": r.group, "completion": text, "answer": g.answer, "reward": score, "status": g.status,
                "finish": r.finish} for text, r, g, score in zip(texts, batch.rollouts, graded, scores)]
    return row, samples


def _console_line(row: dict[str, Any]) -> str:
    return (f"step {row['step']:>4}  reward {row['reward/mean']:.3f}  acc {row['reward/accuracy']:.3f}  "
            f"entropy {row['entropy']:.3f}  len {row['length/mean']:.1f}  gnorm {row['grad_norm']:.3f}  "
            f"gen {row['time/generate']:.1f}s  train {row['time/train']:.1f}s"
            + (f"  eval_acc {row['eval/accuracy']:.3f}" if "eval/accuracy" in row else ""))
