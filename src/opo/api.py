"""opo from Python: build a validated config, train, evaluate, read a run's results.

The same settings, checks and messages as the command line (``opo train KEY=VALUE ...``), with
Python values and one addition: ``task.reward_fn`` may be the reward function itself. It is kept
in the config as the name a worker process imports it by (see
:func:`opo.rewards.functions.function_spec`), so ``config.yaml`` stays YAML and a resumed run
compares equal. Torch loads only when a run starts: building configs and reading results is cheap.

    import opo

    cfg = opo.train_config({"model.path": "tiny", "task.reward_fn": my_reward, "train.steps": 2})
    result = opo.train(cfg)
    result.summary["after"]["eval/accuracy"], result.metrics[-1], result.checkpoint
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

import yaml

from opo.config import ALIASES, EVAL_ALIASES, MOVED, Config, ConfigError, EvalConfig
from opo.rewards.functions import function_spec
from opo.settings import current_key, apply_settings, set_key

__all__ = ["Settings", "TrainResult", "eval_config", "evaluate_model", "load_run", "train", "train_config"]

# {"optim.lr": 1e-5, "rollout": {"samples_per_prompt": 4}} (Python values), or ["optim.lr=1e-5", ...] (as typed
# on the command line: YAML values, text settings as written)
Settings = Union[Mapping[str, Any], Sequence[str], None]
PathLike = Union[str, "os.PathLike[str]"]
C = TypeVar("C", Config, EvalConfig)
FUNCTION_KEYS = ("task.reward_fn",)  # settings that take a function as well as its 'module:function' name


def train_config(settings: Settings = None, path: Optional[PathLike] = None) -> Config:
    """The validated settings of ``opo train``: the defaults, then the YAML file at ``path``, then
    ``settings``. Keys are dotted (``"rollout.max_new_tokens"``), nested (``{"rollout": {...}}``) or
    the command line's short forms (``steps``, ``run_dir``, ``task``, ``seed``, ``threads``); a
    function is accepted for ``task.reward_fn``. Raises :class:`ConfigError` naming the key, with the
    command line's message."""
    return _build(Config(), settings, path, ALIASES)


def eval_config(settings: Settings = None, path: Optional[PathLike] = None) -> EvalConfig:
    """The validated settings of ``opo eval``, built as :func:`train_config` builds ``opo train``'s
    (short forms: ``task``, ``limit``, ``data_path``, ``seed``, ``threads``, ``precision``, ``out_dir``)."""
    return _build(EvalConfig(), settings, path, EVAL_ALIASES)


def _build(cfg: C, settings: Settings, path: Optional[PathLike], aliases: dict[str, str]) -> C:
    apply_settings(cfg, None if path is None else os.fspath(path), [], aliases, MOVED)
    if isinstance(settings, Mapping):
        for key, value in _flatten(cfg, settings, aliases):
            if key in FUNCTION_KEYS and callable(value):  # kept as the name worker processes import it by
                value = function_spec(value, key)
            set_key(cfg, key, value)
    elif isinstance(settings, str):
        raise ConfigError(f"settings must be a mapping or a list of 'key=value' texts, got the text {settings!r}")
    elif settings is not None:
        apply_settings(cfg, None, list(settings), aliases, MOVED)
    return cfg.validate()


def _flatten(root: Any, data: Mapping[str, Any], aliases: dict[str, str], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"rollout": {"max_new_tokens": 8}, "steps": 2}`` -> ``[("rollout.max_new_tokens", 8), ("train.steps", 2)]``:
    a mapping under a section's name is that section's keys; a mapping under any other key (e.g.
    ``task.generator_args``) is its value."""
    out = []
    for name, value in data.items():
        key = f"{prefix}{name}"
        if prefix or isinstance(value, Mapping) or key not in aliases:  # {"task": "gsm8k"}: task.name
            if dataclasses.is_dataclass(_section(root, key)):
                if not isinstance(value, Mapping):
                    raise ConfigError(f"section '{key}' must be a mapping of its keys, got {value!r}")
                out += _flatten(root, value, aliases, key + ".")
                continue
        out.append((current_key(key if prefix else aliases.get(key, key), MOVED), value))
    return out


def _section(root: Any, key: str) -> Any:
    """The config section named by dotted ``key``, or None when ``key`` names no section."""
    obj = root
    for part in key.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            return None
        obj = getattr(obj, part)
    return obj


def _as(kind: type[C], cfg: Union[C, Settings], build: Callable[[Settings], C]) -> C:
    """``cfg`` validated (again: it may have changed since it was built), or the config ``build`` makes of settings."""
    if isinstance(cfg, kind):
        return cfg.validate()
    if isinstance(cfg, (Config, EvalConfig)):
        raise TypeError(f"expected a {kind.__name__} or settings, got a {type(cfg).__name__}")
    return build(cfg)


def _not_in_a_worker(what: str) -> None:
    """A reward worker imports the script that defined the reward function: the script's training code,
    outside ``if __name__ == "__main__":``, would start a run in every worker (and they, workers of their own)."""
    from opo.rewards.grader import WORKER_ENV

    if os.environ.get(WORKER_ENV):
        raise RuntimeError(f"{what} was called while a reward worker process imported the script that defines "
                           "task.reward_fn: put the script's training code under 'if __name__ == \"__main__\":'")


@dataclass
class TrainResult:
    """A training run's results, read from its run directory (rank 0's): ``summary`` (summary.json:
    held-out metrics ``before`` and ``after``, ``wall_time_s``, ...), and, read when first used,
    ``metrics`` (metrics.jsonl), ``config`` (config.yaml) and ``checkpoint`` (the newest intact one)."""

    run_dir: Path
    summary: dict[str, Any]

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's rows in order: one per step (``reward/mean``, ``entropy``, ...) and one per held-out
        evaluation (``eval/accuracy``, ...), each with its ``step``; a last line cut short by a kill is left out."""
        from opo.report import load_run as read_run

        return read_run(self.run_dir)["rows"] if (self.run_dir / "metrics.jsonl").is_file() else []

    @cached_property
    def config(self) -> dict[str, Any]:
        """The run's settings as written to config.yaml (``task.reward_fn`` as its ``module:function`` name)."""
        path = self.run_dir / "config.yaml"
        return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}

    @cached_property
    def checkpoint(self) -> Optional[Path]:
        """The newest intact checkpoint (a model directory: ``model.path`` of a later run or evaluation), or None."""
        from opo.checkpoint import latest

        return latest(self.run_dir / "checkpoints")

    @property
    def stopped(self) -> Optional[str]:
        """The signal that stopped the run early (e.g. ``"SIGINT"``), after a checkpoint; None when it finished."""
        return self.summary.get("stopped")


def train(cfg: Union[Config, Settings] = None) -> TrainResult:
    """Run ``opo train`` with ``cfg`` (a :class:`Config`, validated again here, or settings for
    :func:`train_config`) in this process and return its results. Errors are raised, not turned into
    exit codes: :class:`ConfigError` for bad settings, ``ValueError`` for bad data or models,
    :class:`opo.errors.TrainingAborted`, :class:`opo.errors.DiskFull`. SIGINT/SIGTERM (main thread
    only) stop it after the current step with a checkpoint (``result.stopped``)."""
    _not_in_a_worker("opo.train()")
    cfg = _as(Config, cfg, train_config)
    from opo.commands.train import train as run_train

    summary = run_train(cfg)
    return TrainResult(Path(summary["run_dir"]), summary)


def evaluate_model(cfg: Union[EvalConfig, Settings] = None) -> dict[str, float]:
    """Run ``opo eval`` with ``cfg`` (an :class:`EvalConfig`, validated again here, or settings for
    :func:`eval_config`) and return its metrics (``eval/accuracy``, ``eval/pass@k``, ...); it also
    prints the table and writes summary.json and samples.jsonl to ``run.dir``."""
    _not_in_a_worker("opo.evaluate_model()")
    cfg = _as(EvalConfig, cfg, eval_config)
    from opo.commands.eval import run_eval

    return run_eval(cfg)


def load_run(run_dir: PathLike) -> TrainResult:
    """The results of an ``opo train`` run, finished or not (summary.json is written at its end; without
    it ``summary`` is empty). ValueError when ``run_dir`` holds no run."""
    path = Path(run_dir)
    if not (path / "config.yaml").is_file() and not (path / "metrics.jsonl").is_file():
        why = "it does not exist" if not path.exists() else "it is a file" if not path.is_dir() else \
            "no config.yaml or metrics.jsonl in it"
        raise ValueError(f"{path} is not an opo train run directory: {why}")
    summary = path / "summary.json"
    return TrainResult(path, json.loads(summary.read_text()) if summary.is_file() else {})
