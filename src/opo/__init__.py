"""opo: on-policy RL for language models with verifiable rewards (OPO, arXiv 2505.23585).

The Python API (the command line's ``opo train`` and ``opo eval``, from Python; README "Python API"):

- :func:`train_config` / :func:`eval_config` ``(settings=None, path=None)``: validated settings from a
  dict (dotted or nested keys, Python values; ``task.reward_fn`` may be a function), a list of
  ``key=value`` texts and/or a YAML file, with the command line's checks and messages
  (:class:`ConfigError`);
- :func:`train` ``(cfg) -> TrainResult``: a training run in this process;
- :func:`evaluate_model` ``(cfg) -> dict``: an evaluation's metrics;
- :func:`load_run` ``(run_dir) -> TrainResult``: a run's summary, metrics rows, config and newest checkpoint;
- :class:`Config`, :class:`EvalConfig`: the settings dataclasses (``cfg.optim.lr = 2e-5``).

Names load on first use (PEP 562), so ``import opo`` stays fast and torch loads only when a run starts.
"""

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers read this form too)
if TYPE_CHECKING:
    from opo.api import TrainResult, eval_config, evaluate_model, load_run, train, train_config
    from opo.config import Config, EvalConfig
    from opo.errors import ConfigError

# public name -> the module that defines it
_PUBLIC = {"Config": "opo.config", "EvalConfig": "opo.config", "ConfigError": "opo.errors",
           "TrainResult": "opo.api", "eval_config": "opo.api", "evaluate_model": "opo.api", "load_run": "opo.api",
           "train": "opo.api", "train_config": "opo.api"}

__all__ = ["Config", "ConfigError", "EvalConfig", "TrainResult", "eval_config", "evaluate_model", "load_run", "train",
           "train_config"]


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'opo' has no attribute '{name}'")
    value = getattr(__import__(_PUBLIC[name], fromlist=[name]), name)  # no importlib: import opo stays bare
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
