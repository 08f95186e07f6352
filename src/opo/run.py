"""One setup for every command and bench: compute choice, seeds, task, model + tokenizer, sampler,
and for training the process group's model copy, reference model, optimizer and scheduler.

The task is built before the model loads, so a bad data file fails in a second, not after a load.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from transformers import PreTrainedModel
from transformers.utils import logging as hf_logging

from opo.config import Config, OptimConfig, RunSettings
from opo.distributed import Dist, local_world_size
from opo.hybrid import ModeTokens
from opo.judges import PairJudge
from opo.judges.build import build_judge
from opo.judges.reward import JudgeRewards, combine
from opo.lora import add_adapters, base_path, load_adapters
from opo.models import enable_activation_checkpointing, load_model, stop_token_ids
from opo.rollout.base import Engine
from opo.rollout.hf import HFEngine
from opo.runtime import pick_threads, resolve_device, resolve_precisions, torch_device
from opo.tasks import Task, build_task, decode, limit_prompt_length


@dataclass(frozen=True)
class Compute:
    """What ``auto`` resolved to on this machine."""

    precision: str  # training / scoring forward: bf16 | fp32
    sampling: str  # the sampler: bf16 | fp32
    threads: int
    device: str = "cpu"  # cpu | cuda
    gpu: str = ""  # the GPU's name on cuda

    @property
    def where(self) -> str:
        """The device as the console line names it: empty on the CPU (the line has always been so)."""
        return f"{self.device} ({self.gpu}) " if self.device == "cuda" else ""

    @property
    def torch_device(self) -> torch.device:
        """This process's device (under torchrun with GPUs, its own GPU)."""
        return torch_device(self.device)

    def describe(self, d: Dist = Dist(), fsdp_requested: bool = False) -> str:
        return (f"compute: {self.where}{self.precision} training, {self.sampling} sampling, "
                f"{self.threads} thread{'s' if self.threads > 1 else ''}" + (f" x {d.world} processes" if d.world > 1 else "")
                + (", FSDP" if d.fsdp else " (train.fsdp: one process, nothing to shard)" if fsdp_requested else ""))


def choose_compute(settings: RunSettings, sampling: str = "auto", d: Dist = Dist(), device: str = "auto") -> Compute:
    """Resolve ``auto`` device and precisions for this machine and set torch's thread count."""
    device = resolve_device(device)
    precision, sampling = resolve_precisions(settings.precision, sampling, device)
    threads = settings.threads
    if not threads and settings.deterministic:
        threads = 1  # a timed choice could differ between a run and its resume
    elif not threads and d.world > 1:  # processes on one machine share its cores; timing them would be noise
        threads = max(1, (os.cpu_count() or 1) // local_world_size())
    gpu = torch.cuda.get_device_name(torch_device(device)) if device == "cuda" else ""
    return Compute(precision, sampling, pick_threads(threads), device, gpu)


@dataclass
class Run:
    """The state a command works on. ``policy`` is the model, or its FSDP root in a sharded job;
    the training fields are None outside ``opo train``."""

    cfg: Any  # Config | EvalConfig | DiagnoseConfig
    compute: Compute
    model: PreTrainedModel
    tok: Any
    task: Task
    engine: Engine
    dist: Dist = field(default_factory=Dist)
    policy: Optional[torch.nn.Module] = None
    ref_model: Optional[PreTrainedModel] = None
    optimizer: Optional[torch.optim.Optimizer] = None
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None
    shuffle: Optional[torch.Generator] = None  # off-policy mini-batch order
    modes: Optional[ModeTokens] = None  # the mode tags' ids under hybrid.enabled
    rewards: Optional[JudgeRewards] = None  # the judge's tournaments, when they replace the task's reward
    adapters: Optional[Any] = None  # the PEFT wrapper of model.lora's adapters (they live inside ``model``)

    @property
    def grader(self) -> Union[Task, JudgeRewards]:
        """What scores training completions: the judge's tournaments, or the task's verifier."""
        return self.rewards or self.task

    def reward_metrics(self) -> dict[str, float]:
        """The judge's metrics of the last step, over every process (a collective under torchrun)."""
        return combine(self.dist.gather([self.rewards.metrics()])) if self.rewards else {}

    def answer_text(self, completion: list[int]) -> str:
        """The text the task grades: a hybrid response's answer part, else the whole completion."""
        return self.modes.answer_text(self.tok, completion) if self.modes else decode(self.tok, completion)

    def close(self) -> None:
        self.task.close()
        self.engine.close()


def seed_all(settings: RunSettings) -> None:
    """Seed torch and Python from ``run.seed`` and apply ``run.deterministic``."""
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    if settings.deterministic:  # cuBLAS is deterministic only with a fixed workspace (set before CUDA starts)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(settings.deterministic)


def setup(cfg: Any, *, max_new_tokens: int, d: Dist = Dist(), weights: Optional[str] = None,
          run_dir: Optional[Path] = None) -> Run:
    """Build a :class:`Run` from a validated config; ``weights``: a checkpoint to load instead of
    ``model.path``; ``max_new_tokens``: the longest completion, for the prompt-length check.
    A :class:`~opo.config.Config` (``opo train``) also gets the training fields, and with
    ``judge.backend`` the judge's rewards (an HTTP judge caches its answers in ``run_dir``)."""
    hf_logging.disable_progress_bar()  # opo's own bars say what is going on; these would litter logs
    rollout = getattr(cfg, "rollout", None)
    compute = choose_compute(cfg.run, rollout.precision if rollout else "auto", d, cfg.model.device)
    seed_all(cfg.run)
    # train and diagnose draw training prompts (a config with a rollout section); eval only held-out ones
    task = build_task(cfg.task, for_training=rollout is not None)
    try:
        run = _build(cfg, compute, task, max_new_tokens, d, weights)
        if isinstance(cfg, Config) and cfg.judge.enabled:
            run.rewards = _judge_rewards(cfg, compute, d, run_dir, task)
        return run
    except BaseException:
        task.close()  # grader workers must not outlive a failed start
        raise


def _judge_rewards(cfg: Config, compute: Compute, d: Dist, run_dir: Optional[Path], task: Task) -> JudgeRewards:
    j, seed = cfg.judge, cfg.run.seed
    cache = None if run_dir is None else run_dir / (f"judge_cache.rank{d.rank}.jsonl" if d.world > 1
                                                    else "judge_cache.jsonl")
    judge = build_judge(j, sampling=compute.sampling, seed=seed, cache=cache, device=compute.device)
    return JudgeRewards(task, PairJudge(judge, j.order, seed), j.reward, opponents=j.opponents, votes=j.votes,
                        rating=j.rating, seed=seed)


def _build(cfg: Any, compute: Compute, task: Task, max_new_tokens: int, d: Dist, weights: Optional[str]) -> Run:
    m, seed = cfg.model, cfg.run.seed
    lora = isinstance(cfg, Config) and m.lora.enabled
    model, tok = load_model(m.path if lora else weights or m.path, m.trust_remote_code, seed, m.attention)
    adapters = None
    if lora:  # the adapters are injected into the model: every later step sees the adapted policy
        adapters = (load_adapters(model, weights, trainable=True) if weights
                    else add_adapters(model, m.lora, base_path(m.path)))
    model.to(compute.torch_device)  # the CPU: the model stays where it loaded
    d.broadcast_parameters(model)
    # the sampler's weights are a full copy when the policy's are sharded, so build it first
    engine = build_engine(cfg, model, tok, compute, d)
    limit_prompt_length(task, tok, model, max_new_tokens, getattr(engine, "max_model_len", None))
    hybrid = getattr(cfg, "hybrid", None)
    modes = ModeTokens.of(tok, hybrid) if hybrid is not None and hybrid.enabled else None
    run = Run(cfg, compute, model, tok, task, engine, d, policy=model, modes=modes, adapters=adapters)
    if not isinstance(cfg, Config):  # opo eval, opo diagnose: no optimizer
        model.eval()
        return run
    if m.activation_checkpointing:
        enable_activation_checkpointing(model)
    run.policy = d.shard(model)
    if cfg.algo.kl_coef > 0:  # the reference is the initial policy, also after a resume
        run.ref_model = load_model(m.path, m.trust_remote_code, seed, m.attention)[0].requires_grad_(False)
        run.ref_model.to(compute.torch_device)
        d.broadcast_parameters(run.ref_model)
    run.optimizer = build_optimizer(model, cfg.optim)
    warmup = cfg.optim.warmup_steps
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(
        run.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    run.shuffle = torch.Generator().manual_seed(seed + 1)
    return run


def build_engine(cfg: Any, model: PreTrainedModel, tok: Any, compute: Compute, d: Dist) -> Engine:
    """The sampler ``rollout.engine`` (``engine`` in opo eval) names, on the policy's weights."""
    training = isinstance(cfg, Config)
    name = cfg.rollout.engine if training else getattr(cfg, "engine", "hf")
    if name == "hf":
        return HFEngine(model, stop_token_ids(model, tok), tok.pad_token_id, compute.sampling, seed=cfg.run.seed,
                        separate=d.fsdp)
    from opo.rollout.vllm import VLLMEngine

    v, cuda = cfg.vllm, compute.device == "cuda"
    context = getattr(model.config, "max_position_embeddings", None) or v.max_model_len
    return VLLMEngine(model, stop_token_ids(model, tok), dtype="bfloat16" if compute.sampling == "bf16" else "float32",
                      max_model_len=min(context, v.max_model_len), memory=v.memory, sleep=training and cuda and v.sleep,
                      eager=(not cuda) if v.eager is None else v.eager, seed=cfg.run.seed)


def build_optimizer(model: torch.nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    # fused: one kernel per parameter instead of a chain of foreach passes (~3x faster step on CPU)
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters alone
    return torch.optim.AdamW(trainable, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                             fused=True)


def output_dir(template: str, d: Dist = Dist()) -> Path:
    """``run.dir`` with ``{time}`` filled in; rank 0's clock names it, so every process shares one."""
    return Path(d.broadcast(template.replace("{time}", time.strftime("%Y%m%d-%H%M%S"))))
