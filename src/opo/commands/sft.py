"""``opo sft``: supervised fine-tuning on chat conversations, the loss on assistant tokens only.

The HFT stage of hybrid-thinking training (Jiang et al. 2025, arXiv 2505.14631): next-token
cross-entropy on the assistant messages of chat data, AdamW, a linear learning-rate warm-up over
the first ``sft.warmup_ratio`` of the steps, then a cosine decay towards 0. Each optimizer step
takes a batch of conversations of similar length (``sft.batch_tokens``) in micro-batches whose
gradients accumulate; each micro-batch's summed token loss is divided by the assistant tokens of
the whole step, so how a step is split never changes its gradient. Checkpoints, resume, logs and
signals behave as in ``opo train``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm
from transformers import PreTrainedModel
from transformers.utils import logging as hf_logging

from opo import checkpoint, rundir
from opo.config import ConfigError, OptimConfig, SftConfig
from opo.errors import TrainingAborted
from opo.logprobs import head_logprobs, length_buckets
from opo.metrics import JsonlLogger
from opo.tracking import TensorBoardWriter, Tracker
from opo.models import (enable_activation_checkpointing, extend_tokenizer, init_new_embeddings, load_model,
                        load_tokenizer)
from opo.run import Compute, build_optimizer, choose_compute, output_dir, seed_all
from opo.runtime import StopOnSignal, model_device
from opo.sft_data import Conversation, SftData, collate, load_data, plan_epoch
from opo.update import autocast_context, grad_norm

# what may change when a run resumes: where and how it runs, logs, evaluates and checkpoints
RESUMABLE = ("run.threads", "run.progress", "run.dir", "checkpoint.every", "checkpoint.keep", "checkpoint.resume",
             "checkpoint.allow_changes", "overwrite", "sft.eval_every", "sft.eval_before", "sft.max_bad_steps",
             "sft.tensorboard")


@dataclass
class SftRun:
    """What the loop works on. ``steps`` holds every optimizer step of the run: its epoch and its
    rows of ``data.train``."""

    cfg: SftConfig
    compute: Compute
    model: PreTrainedModel
    tok: Any
    data: SftData
    steps: list[tuple[int, list[int]]]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass
class Progress:
    """What a checkpoint carries besides weights, optimizer and scheduler: where the loop is."""

    step: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


def sft(cfg: SftConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.data``; returns the summary (held-out loss before training
    and after each epoch, the final model's directory). The data is read and checked with the
    tokenizer before the weights load."""
    started = time.time()
    run_dir = output_dir(cfg.run.dir)
    with contextlib.ExitStack() as held:  # the run directory's lock, released on any exit
        c = cfg.checkpoint
        resume_from = rundir.claim(run_dir, rundir.Claim(cfg.to_dict(), c.resume, c.allow_changes, cfg.overwrite,
                                                         "overwrite", RESUMABLE, SftConfig().to_dict()), held, print)
        r = setup(cfg, str(resume_from) if resume_from else None)
        print(f"{_describe(r.compute)}; {len(r.data.train)} conversations, {len(r.steps)} steps "
              f"({cfg.sft.epochs} epochs), {len(r.data.eval)} held out")
        at = _restore(r, resume_from) if resume_from else Progress()
        log = _open_log(run_dir, cfg, at.step if resume_from else -1)
        if at.step == 0 and cfg.sft.eval_before and r.data.eval:
            at.summary["before"] = held_out_loss(r)
            log.log({"step": 0, **at.summary["before"]})
            print(f"held-out loss before training: {at.summary['before']['eval/loss']:.4f}")
        _loop(r, run_dir, at, log)
        at.summary.update({"data/train_rows": len(r.data.train), "data/eval_rows": len(r.data.eval),
                           "data/skipped_rows": r.data.skipped, "compute": _describe(r.compute),
                           "run_dir": str(run_dir)})
        if "stopped" not in at.summary:
            at.summary["wall_time_s"] = time.time() - started
            print(_result_lines(at.summary))
        (run_dir / "summary.json").write_text(json.dumps(at.summary, indent=2))
        return at.summary


def setup(cfg: SftConfig, weights: str | None = None) -> SftRun:
    """Tokenizer (with ``sft.add_tokens``), data, then model, optimizer and schedule; ``weights``: a
    checkpoint to load instead of ``model.path`` (its tokenizer has the added tokens already)."""
    hf_logging.disable_progress_bar()
    m, seed = cfg.model, cfg.run.seed
    tok = load_tokenizer(weights or m.path, m.trust_remote_code)
    new = extend_tokenizer(tok, cfg.sft.add_tokens)
    if weights and new:  # its embeddings would outgrow the checkpoint's optimizer state
        raise ConfigError(f"resume: sft.add_tokens adds {tok.convert_ids_to_tokens(list(new))} to the run's tokenizer; "
                          f"start a new run from the checkpoint instead (model.path={weights})")
    data = load_data(cfg.data, tok, seed)  # a bad row fails here, before the weights load
    compute = choose_compute(cfg.run, device=m.device)
    seed_all(cfg.run)
    model, _ = load_model(weights or m.path, m.trust_remote_code, seed, m.attention, tokenizer=tok)
    init_new_embeddings(model, tok, new)
    model.to(compute.torch_device)  # before the optimizer, whose state follows the weights
    if m.activation_checkpointing:
        enable_activation_checkpointing(model)
    _check_context(model, data, cfg.data.max_length)
    lengths = [len(c) for c in data.train]
    s = cfg.sft
    steps = [(e, b) for e in range(s.epochs) for b in plan_epoch(lengths, s.batch_tokens, s.sort_window, seed, e)]
    optimizer = build_optimizer(model, OptimConfig(lr=s.lr, weight_decay=s.weight_decay, betas=s.betas, eps=s.eps))
    warmup = math.ceil(s.warmup_ratio * len(steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: warmup_cosine(i, warmup, len(steps)))
    return SftRun(cfg, compute, model, tok, data, steps, optimizer, scheduler)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor of optimizer step ``step`` (0-based) of ``total``: a linear rise over the
    first ``warmup`` steps, 1 at step ``warmup``, then half a cosine towards 0. No step has a zero
    learning rate: the first warms up from 1 / (warmup + 1), the last is one step short of 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _loop(r: SftRun, run_dir: Path, at: Progress, log: JsonlLogger) -> None:
    """The optimizer steps from ``at.step`` on, each logged, with the held-out loss after every
    epoch, checkpoints, and a clean stop (finish the step, checkpoint) on SIGTERM/SIGINT."""
    cfg, total = r.cfg, len(r.steps)
    bad_steps = 0  # consecutive steps skipped for a non-finite gradient
    with tqdm(range(at.step, total), initial=at.step, total=total, desc="opo sft",
              disable=not cfg.run.progress or None, dynamic_ncols=True) as bar, StopOnSignal() as stop:
        for step in bar:
            epoch, rows = r.steps[step]
            row = {"step": step + 1, "epoch": epoch + 1, **train_step(r, rows)}
            at.step = step + 1
            epoch_done = at.step == total or r.steps[at.step][0] != epoch
            if r.data.eval and (epoch_done or (cfg.sft.eval_every and at.step % cfg.sft.eval_every == 0)):
                row.update(held_out_loss(r))
                if epoch_done:
                    at.summary.setdefault("epochs", []).append({"epoch": epoch + 1, "step": at.step,
                                                                "eval/loss": row["eval/loss"]})
                    at.summary["after"] = {k: v for k, v in row.items() if k.startswith("eval/")}
            log.log(row)
            tqdm.write(_console_line(row))
            bar.set_postfix(loss=f"{row['loss']:.3f}", epoch=epoch + 1)
            bad_steps = bad_steps + 1 if row["skipped"] else 0
            if bad_steps >= cfg.sft.max_bad_steps:
                raise TrainingAborted(f"step {at.step}: the gradient was NaN/inf in {bad_steps} consecutive steps "
                                      f"(sft.max_bad_steps={cfg.sft.max_bad_steps}); no update was applied in those "
                                      f"steps. Try a lower sft.lr or run.precision=fp32.")
            if (cfg.checkpoint.every and at.step % cfg.checkpoint.every == 0) or at.step == total or stop.requested:
                saved = _save(r, run_dir, at)
                if at.step == total:
                    at.summary["model"] = str(saved)  # the fine-tuned model: weights and tokenizer
            if stop.requested:
                at.summary["stopped"] = stop.requested
                print(f"{stop.requested}: stopped after step {at.step} with a checkpoint; continue with "
                      f"'opo sft checkpoint.resume=true run.dir={run_dir}' (and the same settings)")
                break


def train_step(r: SftRun, rows: list[int]) -> dict[str, float]:
    """One optimizer step on conversations ``rows`` of ``r.data.train``; returns its metrics (``lr``:
    the learning rate it used)."""
    t0 = time.time()
    convs = [r.data.train[i] for i in rows]
    n_trained = sum(c.n_trained for c in convs)  # the step's normaliser, shared by its micro-batches
    lr = r.optimizer.param_groups[0]["lr"]
    r.model.train()
    r.optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for mb in micro_batches(convs, r.cfg.sft.micro_batch_tokens):
        nll = token_nll(r.model, mb, r.tok.pad_token_id, r.compute.precision, r.cfg.model.fp32_head)
        (nll / n_trained).backward()
        loss += float(nll.detach()) / n_trained
    norm = grad_norm(r.model, r.cfg.sft.grad_clip)
    if math.isfinite(norm):
        r.optimizer.step()  # a NaN/inf gradient must not reach the weights
    r.optimizer.zero_grad(set_to_none=True)
    r.scheduler.step()
    seconds = time.time() - t0
    tokens = sum(len(c) for c in convs)
    return {"loss": loss, "tokens": float(n_trained), "tokens/all": float(tokens), "lr": lr, "grad_norm": norm,
            "skipped": float(not math.isfinite(norm)), "time/step": seconds, "tokens/per_s": tokens / seconds}


def micro_batches(convs: list[Conversation], budget: int) -> list[list[Conversation]]:
    """Conversations grouped by length into passes of at most ``budget`` padded tokens (rows x longest)."""
    buckets = length_buckets(torch.tensor([len(c) for c in convs]), budget)
    return [[convs[i] for i in b.tolist()] for b in buckets]


def token_nll(model: PreTrainedModel, convs: list[Conversation], pad_id: int, precision: str,
              fp32_head: bool) -> torch.Tensor:
    """Summed negative log-likelihood (a scalar) of the trained tokens of ``convs``, one forward.

    Logits exist only for trained positions, a chunk at a time (:func:`opo.logprobs.head_logprobs`):
    no ``(B, W, V)`` tensor, and prompt positions never reach the output layer."""
    device = model_device(model)
    ids, attention, trained = (t.to(device) for t in collate(convs, pad_id))  # (B, W) each
    with autocast_context(precision, device.type):
        out = model.get_decoder()(input_ids=ids[:, :-1], attention_mask=attention[:, :-1], use_cache=False)
        targets = trained[:, 1:]  # (B, W-1): position t predicts token t + 1
        logp, _ = head_logprobs(model, out.last_hidden_state[targets], ids[:, 1:][targets], fp32_head=fp32_head)  # (M,)
    return -logp.sum()


@torch.no_grad()
def held_out_loss(r: SftRun) -> dict[str, float]:
    """Mean negative log-likelihood per trained token of the held-out conversations."""
    t0 = time.time()
    r.model.eval()  # no dropout
    try:
        nll = sum(float(token_nll(r.model, mb, r.tok.pad_token_id, r.compute.precision, r.cfg.model.fp32_head))
                  for mb in micro_batches(r.data.eval, r.cfg.sft.micro_batch_tokens))
    finally:
        r.model.train()
    tokens = sum(c.n_trained for c in r.data.eval)
    return {"eval/loss": nll / tokens, "eval/tokens": float(tokens), "time/eval": time.time() - t0}


def _check_context(model: PreTrainedModel, data: SftData, max_length: int) -> None:
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(c) for c in data.train + data.eval)
    if context is not None and longest > context:
        raise ValueError(f"the longest conversation has {longest} tokens (data.max_length={max_length}), more than "
                         f"the model's context of {context} tokens (max_position_embeddings): set data.max_length="
                         f"{context}, with data.skip_bad_rows=true to leave longer rows out")


def _restore(r: SftRun, ckpt: Path) -> Progress:
    """Optimizer, scheduler, RNG and loop position of a checkpoint (its weights are already loaded)."""
    state = checkpoint.restore(ckpt, r.model, r.optimizer, r.scheduler)
    at = Progress(state["step"], json.loads(state["summary"]))
    if at.step >= len(r.steps):
        raise ConfigError(f"resume: the checkpoint {ckpt} is at step {at.step}, the last of the run's {len(r.steps)} "
                          f"steps ({r.cfg.sft.epochs} epochs): nothing to train")
    print(f"resume: continuing from {ckpt} (step {at.step})")
    return at


def _save(r: SftRun, run_dir: Path, at: Progress) -> Path:
    state = {"step": at.step, "optimizer": checkpoint.optimizer_state(r.model, r.optimizer),
             "scheduler": r.scheduler.state_dict(), "rng": checkpoint.rng_state(), "summary": json.dumps(at.summary)}
    return checkpoint.save(run_dir / "checkpoints", at.step, r.model, r.tok, state, r.cfg.to_dict(),
                           r.cfg.checkpoint.keep)


def _open_log(run_dir: Path, cfg: SftConfig, last_step: int) -> Tracker:
    """The metrics log, cut back to ``last_step`` on resume (later rows are written again), and the
    config this run trains with."""
    if cfg.checkpoint.resume:
        rundir.truncate_log(run_dir / "metrics.jsonl", last_step)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return Tracker(JsonlLogger(run_dir / "metrics.jsonl"),
                   (TensorBoardWriter(run_dir / "tensorboard"),) if cfg.sft.tensorboard else ())


def _describe(compute: Compute) -> str:
    threads = f"{compute.threads} thread{'s' * (compute.threads > 1)}"
    return f"compute: {compute.where}{compute.precision} training, {threads}"


def _console_line(row: dict[str, Any]) -> str:
    return (f"step {row['step']:>5}  epoch {row['epoch']}  loss {row['loss']:.4f}  lr {row['lr']:.2e}  "
            f"gnorm {row['grad_norm']:.3f}  tokens {int(row['tokens'])}  {row['time/step']:.1f}s"
            + (f"  eval_loss {row['eval/loss']:.4f}" if "eval/loss" in row else ""))


def _result_lines(summary: dict[str, Any]) -> str:
    lines = []
    if "after" in summary:
        before = f"before {summary['before']['eval/loss']:.4f} -> " if "before" in summary else ""
        lines.append(f"held-out loss: {before}after {summary['after']['eval/loss']:.4f}")
    lines.append(f"wall time {summary['wall_time_s'] / 60:.1f} min; run directory {summary['run_dir']}")
    lines.append(f"model: {summary['model']} (load it with model.path={summary['model']})")
    return "\n".join(lines)
