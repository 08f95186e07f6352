"""``opo train``: the RL loop. Sample, score, advantage, update, log, checkpoint; nothing else.

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
import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml
from tqdm import tqdm

from opo import checkpoint, rundir
from opo.algos.advantages import ADVANTAGES, extras_for
from opo.config import Config, ConfigError
from opo.distributed import Dist, sampling_seed
from opo.distributed import setup as setup_distributed
from opo.distributed import teardown as teardown_distributed
from opo.errors import DiskFull, TrainingAborted
from opo.evaluate import evaluate
from opo.hybrid import MODE_NAMES, hybrid_extras, mode_metrics, shown_text
from opo.hybrid_eval import evaluate_hybrid
from opo.lora import parameter_counts
from opo.metrics import JsonlLogger, repetition_metrics, rollout_metrics
from opo.rollout.base import RolloutBatch
from opo.run import Run, output_dir, setup
from opo.runtime import StopOnSignal, resolve_device
from opo.tasks import decode, encode
from opo.tracking import Tracker, open_tracker
from opo.update import Scoring, StepData, policy_update


def train(cfg: Config) -> dict[str, Any]:
    """Run ``cfg.train.steps`` RL steps; returns the summary (held-out accuracy before/after, timings).

    Under ``torchrun`` every process runs this same loop on its share of each step's prompts
    (see :mod:`opo.distributed`); rank 0 alone logs, evaluates and writes checkpoints.
    """
    d = setup_distributed(cfg.train.fsdp, device=resolve_device(cfg.model.device))  # nccl on GPUs
    try:
        with contextlib.ExitStack() as held:  # the run directory's lock, released on any exit
            return _train(cfg, d, held)
    finally:
        teardown_distributed(d)


@dataclass
class Progress:
    """What a checkpoint carries besides weights and optimizer: where the loop is."""

    step: int = 0
    data_pos: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


def _train(cfg: Config, d: Dist, held: contextlib.ExitStack) -> dict[str, Any]:
    started = time.time()
    say = print if d.main else _silent
    if cfg.rollout.prompts_per_step < d.world:
        raise ConfigError(f"rollout.prompts_per_step ({cfg.rollout.prompts_per_step}) must be at least the number of "
                          f"processes ({d.world}): each process samples whole prompt groups")
    run_dir = output_dir(cfg.run.dir, d)
    resume_from = _claim(run_dir, cfg, d, held, say)
    run = setup(cfg, d=d, weights=str(resume_from) if resume_from else None,
                max_new_tokens=max(cfg.rollout.max_new_tokens, cfg.train.eval_max_new_tokens), run_dir=run_dir)
    try:
        at = _start(run, resume_from, run_dir, say)
        log, samples_log = _open_logs(run_dir, cfg, d, at.step if resume_from else -1, held)
        if at.step == 0 and cfg.train.eval_before:
            at.summary["before"] = _held_out(run, log, step=0)
            say(f"held-out accuracy before training: {at.summary['before']['eval/accuracy']:.1%} "
                f"({int(at.summary['before']['eval/n'])} problems, greedy)")

        bad_steps = 0  # consecutive steps whose every update was skipped for a non-finite gradient
        with tqdm(range(at.step, cfg.train.steps), initial=at.step, total=cfg.train.steps, desc="opo train",
                  disable=not (cfg.run.progress and d.main) or None, dynamic_ncols=True) as bar, \
                StopOnSignal() as stop:  # SIGTERM/SIGINT: finish the step, checkpoint, exit cleanly
            for step in bar:
                shift = bool(cfg.train.shift_every) and (step + 1) % cfg.train.shift_every == 0
                row, samples = rl_step(run, at.data_pos, step, shift)
                run.scheduler.step()
                at.step, at.data_pos = step + 1, at.data_pos + cfg.rollout.prompts_per_step
                row = {"step": at.step, **row, "lr": run.scheduler.get_last_lr()[0]}
                if cfg.train.eval_every and at.step % cfg.train.eval_every == 0 and at.step < cfg.train.steps:
                    row.update(_held_out(run))  # logged with the step's row
                _write_logs(d, log, samples_log, row, samples)
                bar.set_postfix(reward=f"{row['reward/mean']:.2f}", step_s=f"{row['time/step']:.1f}")
                bad_steps = bad_steps + 1 if row["optimizer_steps"] == 0 else 0  # the same on every process
                if bad_steps >= cfg.train.max_bad_steps:
                    raise TrainingAborted(_bad_steps_message(cfg, run_dir, at.step, bad_steps))
                stopping = d.any(stop.requested is not None)  # a signal to any process stops all after this step
                if (cfg.checkpoint.every and at.step % cfg.checkpoint.every == 0) or at.step == cfg.train.steps \
                        or stopping:
                    _save(run, run_dir, at)
                if stopping:
                    at.summary["stopped"] = stop.requested or "SIGTERM"
                    say(f"{at.summary['stopped']}: stopped after step {at.step} with a checkpoint; continue with "
                        f"'opo train checkpoint.resume=true run.dir={run_dir}' (and the same settings)")
                    break
        _finish(run, at, log, run_dir, started, say)
        return at.summary
    finally:
        run.close()


def _start(run: Run, resume_from: Optional[Path], run_dir: Path, say: Callable) -> Progress:
    """Where the loop starts (a checkpoint's position, or step 0) and the summary's setup entries."""
    cfg, d = run.cfg, run.dist
    say(run.compute.describe(d, cfg.train.fsdp))
    at = _restore(run, resume_from, run_dir, say) if resume_from else Progress()
    at.summary["data/skipped_rows"] = run.task.skipped_rows
    at.summary["compute"] = run.compute.describe(d)
    at.summary.update(parameter_counts(run.model))
    if run.adapters is not None:
        say(f"LoRA (model.lora.rank={cfg.model.lora.rank}): {at.summary['params/trainable']:,.0f} trainable of "
            f"{at.summary['params/total']:,.0f} parameters")
    return at


def _finish(run: Run, at: Progress, log: Optional[Tracker], run_dir: Path, started: float, say: Callable) -> None:
    """The held-out evaluation after training (not after a signal's stop) and summary.json."""
    if "stopped" not in at.summary:
        at.summary["after"] = _held_out(run, log, step=run.cfg.train.steps)
        at.summary["wall_time_s"] = time.time() - started
        say(_result_lines(at.summary, run_dir))
    at.summary["run_dir"] = str(run_dir)
    at.summary["data/held_out_repeats"] = run.task.held_out_repeats  # grows as reasoning_gym draws items
    if run.dist.main:
        (run_dir / "summary.json").write_text(json.dumps(at.summary, indent=2))
        log.summary(at.summary)  # W&B: the run's summary; its tracker closes with `held`


def rl_step(run: Run, data_pos: int, step: int, measure_shift: bool = False
            ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """RL step ``step`` on the prompts at ``data_pos``: metrics and the step's samples (``measure_shift``:
    also the policy shift of the update, at the cost of one forward pass). Under torch.distributed
    this process samples and grades its share of the prompts; the rest of the step sees the global batch."""
    cfg, d, tok = run.cfg, run.dist, run.tok
    t_step = time.time()
    # 1. Sample K completions per prompt from the current weights.
    groups = [data_pos + i for i in d.share(cfg.rollout.prompts_per_step)]  # a group is named by its data position
    examples = {g: run.task.train_example(g) for g in groups}
    run.engine.generator.manual_seed(sampling_seed(cfg.run.seed, step, d.rank))
    K = cfg.rollout.samples_per_prompt
    forced = run.modes.prefixes(len(groups), K) if run.modes else None  # hybrid: half of each group thinks
    batch = run.engine.generate(encode(tok, list(examples.values())), groups, K, cfg.rollout.max_new_tokens,
                                cfg.rollout.temperature, forced)
    t_gen = time.time() - t_step

    # 2. Verifiable rewards; every process then gets the whole batch (token ids and rewards, a few KB).
    t0 = time.time()
    batch, texts, graded, scores = _score(run, batch, examples)
    t_reward = time.time() - t0
    rewards = torch.tensor(scores)  # (N,)

    # 3. Advantages from the registered estimator, 4. one on-policy update.
    t0 = time.time()
    data = StepData.from_rollouts(batch, torch.empty(0), tok.pad_token_id)
    a, estimator = cfg.algo, ADVANTAGES.get(cfg.algo.advantage)
    extras = hybrid_extras(run.modes, batch, data.mask) if run.modes else {}
    data.advantages = estimator(rewards, data.mask, batch.group_ids(), **extras_for(estimator, extras),
                                **a.advantage_params)  # (N, T)
    run.engine.offload()  # a GPU sampler's memory goes to the update until the sync below
    update = policy_update(run.policy, run.optimizer, data, a, scoring(cfg, run), cfg.optim.grad_clip, run.ref_model,
                           run.shuffle, measure_shift, d)
    run.engine.sync_weights()
    t_train = time.time() - t0

    gen_tokens = float(data.mask.sum())
    trained_tokens = gen_tokens + sum(len(p) for p in data.prompts)  # shared prompts count once
    row = {
        **rollout_metrics(rewards, data.advantages, data.mask, batch.group_ids(), [r.finish for r in batch.rollouts]),
        **update,
        **repetition_metrics([r.completion for r in batch.rollouts], cfg.repetition.n, cfg.repetition.min_count),
        **_grading_metrics([g.status for g in graded]),
        **run.reward_metrics(),
        **(mode_metrics(rewards, data.mask, batch, extras["modes"], _margin(estimator, a.advantage_params))
           if run.modes else {}),
        "time/generate": t_gen, "time/reward": t_reward, "time/train": t_train, "time/step": time.time() - t_step,
        "tokens/generated": gen_tokens, "tokens/trained": trained_tokens,
        "tokens/generate_per_s": gen_tokens / t_gen, "tokens/train_per_s": trained_tokens / t_train,
    }
    samples = [{"group": r.group, "completion": text, "answer": g.answer, "reward": score, "status": g.status,
                "finish": r.finish, **({"mode": MODE_NAMES[run.modes.mode_of(r.completion)]} if run.modes else {})}
               for text, r, g, score in zip(texts, batch.rollouts, graded, scores)]
    return row, samples


def _score(run: Run, batch: RolloutBatch, examples: dict[int, Any]
           ) -> tuple[RolloutBatch, list[str], list[Any], list[float]]:
    """Grade this process's rollouts, then gather the whole batch: rollouts, shown texts, verdicts and
    rewards (a completion cut off at the length limit gets rollout.truncated_reward, unless 'grade')."""
    tok = run.tok
    texts = [shown_text(tok, r.completion) if run.modes else decode(tok, r.completion) for r in batch.rollouts]
    graded = run.grader.grade([run.answer_text(r.completion) for r in batch.rollouts],
                              [examples[r.group] for r in batch.rollouts])
    scored = run.dist.gather(list(zip(batch.rollouts, texts, graded)))
    batch = RolloutBatch([r for r, _, _ in scored])
    texts, graded = [t for _, t, _ in scored], [g for _, _, g in scored]
    truncated = run.cfg.truncated_reward()  # a cut-off completion: None grades it as it is
    scores = [truncated if truncated is not None and r.finish == "length" else g.reward
              for r, g in zip(batch.rollouts, graded)]
    return batch, texts, graded, scores


def _margin(estimator: Callable, params: dict[str, Any]) -> float:
    """The estimator's mode margin (its default unless set), 0 for one without one."""
    default = inspect.signature(estimator).parameters.get("margin")
    return float(params.get("margin", default.default if default is not None else 0.0))


def scoring(cfg: Config, run: Run) -> Scoring:
    """How the trainer scores the sampler's completions."""
    return Scoring(cfg.rollout.temperature, run.compute.precision, cfg.model.fp32_head, cfg.train.micro_batch_tokens,
                   cfg.correction, cfg.algo.correction_threshold)


def _grading_metrics(statuses: list[str]) -> dict[str, float]:
    n = len(statuses)
    return {"reward/no_answer": statuses.count("no_answer") / n,
            "reward/grader_failures": float(statuses.count("timeout") + statuses.count("error")),
            "reward/errors": float(statuses.count("error")), "reward/timeouts": float(statuses.count("timeout"))}


def _claim(run_dir: Path, cfg: Config, d: Dist, held: contextlib.ExitStack, say: Callable) -> Optional[Path]:
    """The run directory locked for the run and the checkpoint to resume from (see :func:`rundir.claim`)."""
    c = cfg.checkpoint
    return rundir.claim(run_dir, rundir.Claim(cfg.to_dict(), c.resume, c.allow_changes, cfg.train.overwrite,
                                              defaults=Config().to_dict()), held, say, d)


def _restore(run: Run, ckpt: Path, run_dir: Path, say: Callable) -> Progress:
    """Optimizer, scheduler, RNG and loop position of a checkpoint (its weights are already loaded)."""
    state = checkpoint.restore(ckpt, run.model, run.optimizer, run.scheduler)
    run.shuffle.set_state(state["shuffle"])
    at = Progress(state["step"], state["data_pos"], json.loads(state["summary"]))
    steps = run.cfg.train.steps
    if at.step > steps or (at.step == steps and _finished(run_dir)):
        raise ConfigError(f"resume: the checkpoint {ckpt} is at step {at.step} and train.steps={steps}: "
                          "nothing to train; raise train.steps to continue")
    if at.step == steps:  # stopped during the final evaluation: that is what is left
        say(f"resume: {ckpt} is the last step's checkpoint; running the final held-out evaluation")
    else:
        say(f"resume: continuing from {ckpt} (step {at.step})")
    return at


def _finished(run_dir: Path) -> bool:
    """Whether the run wrote its summary after the final held-out evaluation."""
    try:
        return "after" in json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False


def _save(run: Run, run_dir: Path, at: Progress) -> None:
    """A checkpoint of step ``at.step``: gathered from the shards under FSDP, where every process
    takes part; else rank 0's own. No process moves on (or exits) before it is complete, and a
    full disk stops every process with rank 0's message."""
    d = run.dist
    weights = d.model_state(run.model)
    optimizer_state = checkpoint.optimizer_state(run.model, run.optimizer) if d.main or d.fsdp else None
    failure = None
    if d.main:
        state = {"step": at.step, "data_pos": at.data_pos, "optimizer": optimizer_state,
                 "scheduler": run.scheduler.state_dict(), "rng": checkpoint.rng_state(),
                 "shuffle": run.shuffle.get_state(), "summary": json.dumps(at.summary)}
        try:
            checkpoint.save(run_dir / "checkpoints", at.step, run.model, run.tok, state, run.cfg.to_dict(),
                            run.cfg.checkpoint.keep, weights, run.adapters, run.cfg.model.lora.merged)
        except Exception as e:
            failure = e
    _agree_on(d, failure)  # also the barrier: every process waits for rank 0's save


def _write_logs(d: Dist, log: Optional[Tracker], samples_log: Optional[JsonlLogger], row: dict[str, Any],
                samples: list[dict[str, Any]]) -> None:
    """Rank 0 logs the step (metrics.jsonl first, then its mirrors, and prints its line); a failed write
    (a full disk) stops every process."""
    failure = None
    if d.main:
        try:
            log.log(row)
            for sample in samples:
                samples_log.log({"step": row["step"], **sample})
        except Exception as e:
            failure = e
        tqdm.write(_console_line(row))
    _agree_on(d, failure)


def _agree_on(d: Dist, failure: Optional[Exception]) -> None:
    """Raise rank 0's ``failure`` on rank 0 and a one-line copy of it on every other process, so no
    process waits at a collective the failed one will never reach."""
    message = d.broadcast(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if message is not None:
        raise (DiskFull if message.startswith("DiskFull") else RuntimeError)(f"rank 0 stopped: {message}")


def _open_logs(run_dir: Path, cfg: Config, d: Dist, last_step: int, held: contextlib.ExitStack
               ) -> tuple[Optional[Tracker], Optional[JsonlLogger]]:
    """Rank 0's metrics tracker (metrics.jsonl, mirrored to TensorBoard and W&B where enabled; closed
    when ``held`` closes, W&B's run marked failed on an exception) and samples log, cut back to
    ``last_step`` on resume (rows after the checkpoint will be written again; a run resumed from a
    checkpoint continues its W&B run), and the config this run trains with. A mirror that cannot start
    (W&B without a login) stops every process now, before any training."""
    failure, logs = None, (None, None)
    if d.main:
        try:
            if cfg.checkpoint.resume:
                for name in ("metrics.jsonl", "samples.jsonl"):
                    rundir.truncate_log(run_dir / name, last_step)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            tracker = held.enter_context(open_tracker(run_dir, cfg, resumed_at=last_step if last_step >= 0 else None))
            logs = (tracker, JsonlLogger(run_dir / "samples.jsonl"))
        except Exception as e:
            failure = e
    _agree_on(d, failure)
    return logs


def _held_out(run: Run, log: Optional[Tracker] = None, step: int = 0) -> dict[str, float]:
    """Held-out metrics; every process evaluates its share of the problems. With ``log`` (rank 0's)
    they are logged as their own row at ``step``."""
    cfg, t0 = run.cfg, time.time()
    ks = tuple(k for k in cfg.train.eval_k if k <= cfg.train.eval_n)
    # Evaluation samples from its own seeded stream; training reseeds its sampler every step, so
    # whether and how often evaluation runs never changes the training rollouts.
    run.engine.generator.manual_seed(cfg.run.seed + 10_000 + run.dist.rank)
    if run.modes:  # a hybrid model: HAcc, think rates, accuracy per mode and of its own choice
        result, _ = evaluate_hybrid(run.engine, run.tok, run.task, run.modes, cfg.hybrid,
                                    temperature=cfg.train.eval_temperature,
                                    max_new_tokens=cfg.train.eval_max_new_tokens, dist=run.dist)
    else:
        result, _ = evaluate(run.engine, run.tok, run.task, n=cfg.train.eval_n, ks=ks,
                             temperature=cfg.train.eval_temperature, max_new_tokens=cfg.train.eval_max_new_tokens,
                             repetition=(cfg.repetition.n, cfg.repetition.min_count), dist=run.dist)
    result["time/eval"] = time.time() - t0
    if log is not None:
        log.log({"step": step, **result})
    return result


def _bad_steps_message(cfg: Config, run_dir: Path, step: int, bad_steps: int) -> str:
    return (f"step {step}: the gradient was NaN/inf in {bad_steps} consecutive steps (train.max_bad_steps="
            f"{cfg.train.max_bad_steps}); no update was applied in those steps and the last checkpoint in "
            f"{run_dir / 'checkpoints'} is unchanged. Their samples are in {run_dir / 'samples.jsonl'}. "
            "Try a lower optim.lr or run.precision=fp32.")


def _result_lines(summary: dict[str, Any], run_dir: Path) -> str:
    after = summary["after"]["eval/accuracy"]
    if "before" in summary:
        before = summary["before"]["eval/accuracy"]
        head = f"held-out accuracy: before {before:.1%} -> after {after:.1%} ({100 * (after - before):+.1f} points)"
    else:
        head = f"held-out accuracy after training: {after:.1%}"
    return f"{head}\nwall time {summary['wall_time_s'] / 60:.1f} min; run directory {run_dir}"


def _console_line(row: dict[str, Any]) -> str:
    return (f"step {row['step']:>4}  reward {row['reward/mean']:.3f}  acc {row['reward/accuracy']:.3f}  "
            f"entropy {row['entropy']:.3f}  len {row['length/mean']:.1f}  gnorm {row['grad_norm']:.3f}  "
            f"gen {row['time/generate']:.1f}s  train {row['time/train']:.1f}s"
            + (f"  think_wins {row['mode/think_wins']:.2f}  p_think {row['mode/p_think']:.3f}" if "mode/p_think" in row
               else "")
            + (f"  judge: verifier_acc {row['judge/verifier_accuracy']:.3f}  calls {row['judge/calls']:.0f}  "
               f"no_verdict {row['judge/no_verdict']:.0f}  failed {row['judge/failures']:.0f}" if "judge/calls" in row
               else "")
            + (f"  eval_acc {row['eval/accuracy']:.3f}" if "eval/accuracy" in row else ""))


def _silent(*args: Any, **kwargs: Any) -> None:
    """``print`` on processes other than rank 0."""
