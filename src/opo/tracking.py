"""Where a run's metrics go: one ``log(row)`` writes metrics.jsonl (the record ``opo report`` and a
resume rely on) and mirrors the row's numbers to TensorBoard and Weights & Biases where they are
enabled (docs/tracking.md). Only rank 0 opens a tracker.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any, Optional

from opo.errors import ConfigError
from opo.metrics import JsonlLogger

WANDB_ID_FILE = "wandb-run-id"  # in the run directory: the W&B run a resumed run continues


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The row's numeric values (not ``step``, not booleans): what the mirrors plot."""
    return {k: v for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"after": {"eval/accuracy": 0.5}}`` -> ``{"after/eval/accuracy": 0.5}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[prefix + key] = value
    return flat


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


class TensorBoardWriter:
    """Each numeric value of a row as a TensorBoard scalar at the row's ``step``. ``purge_step``
    (a resumed run: the first step after its checkpoint) hides the events an interrupted run wrote
    from that step on, so TensorBoard shows each step once."""

    def __init__(self, log_dir: Path, purge_step: Optional[int] = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("train.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, row: dict[str, Any]) -> None:
        for key, value in numbers(row).items():
            self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbWriter:
    """One Weights & Biases run per opo run: the config, every numeric value of each row with opo's
    ``step`` as the x axis, and the summary. The run's id is kept in ``<run_dir>/wandb-run-id``, so a
    run resumed from a checkpoint continues the same W&B run (``resume=True``). The API key comes from
    ``wandb login`` or WANDB_API_KEY, as wandb itself reads them; opo never reads or writes it."""

    def __init__(self, settings: Any, run_dir: Path, config: dict[str, Any], resume: bool = False) -> None:
        settings.validate()  # the package is installed, else a one-line ConfigError
        import wandb

        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else ""
        if not run_id:
            run_id = secrets.token_hex(4)  # wandb's own ids: 8 characters of [a-z0-9]
            id_file.write_text(run_id + "\n")
        try:
            self.run = wandb.init(project=settings.project, name=settings.name or run_dir.resolve().name,
                                  tags=[str(t) for t in settings.tags], entity=settings.entity,
                                  group=settings.group, dir=str(run_dir), id=run_id,
                                  resume="allow",
                                  # online: wandb's own choice, so WANDB_MODE=offline or `wandb offline` still wins
                                  mode=None if settings.mode == "online" else settings.mode)
            # x axis: opo's step, logged as a metric. A resumed run logs again the steps after its
            # checkpoint; with step= wandb would drop them as older than its own last step.
            # a resume may change resumable settings (train.steps, ...): W&B must take the new values
            self.run.config.update(config, allow_val_change=True)
            self.run.define_metric("step")
            self.run.define_metric("*", step_metric="step")
        except Exception as e:  # no API key, no network, a bad entity: say so before any training
            raise ConfigError(f"train.wandb: wandb did not start ({_one_line(e)}); log in with 'wandb login' or set "
                              "WANDB_API_KEY, or log offline with train.wandb.mode=offline and upload later with "
                              "'wandb sync'") from None
        self.id = run_id
        self._failed_log = False

    def log(self, row: dict[str, Any]) -> None:
        if self._failed_log:
            return
        try:
            self.run.log({"step": row["step"], **numbers(row)})
        except Exception as e:  # metrics.jsonl has the row: W&B trouble does not end the training
            self._failed_log = True
            print(f"opo: warning: wandb stopped logging at step {row.get('step')} ({_one_line(e)}); metrics.jsonl "
                  "keeps every row", file=sys.stderr)

    def summary(self, summary: dict[str, Any]) -> None:
        try:
            self.run.summary.update(flatten(summary))
        except Exception as e:  # the run is done and summary.json written: W&B trouble does not fail it
            print(f"opo: warning: wandb did not take the summary ({_one_line(e)}); summary.json has it", file=sys.stderr)

    def close(self, failed: bool = False) -> None:
        try:
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as e:
            print(f"opo: warning: wandb did not finish its run ({_one_line(e)}); 'wandb sync' uploads what it wrote",
                  file=sys.stderr)


class Tracker:
    """The run's metrics log: ``log(row)`` appends to metrics.jsonl first (a full disk raises
    :class:`opo.errors.DiskFull` before any mirror sees the row), then to each mirror.
    ``summary(dict)`` gives the mirrors the end-of-run summary. As a context manager it closes the
    mirrors on any exit; W&B marks the run failed when an exception ends it."""

    def __init__(self, jsonl: JsonlLogger, mirrors: tuple[Any, ...] = ()) -> None:
        self.jsonl = jsonl
        self.mirrors = list(mirrors)
        self.path = jsonl.path

    def log(self, row: dict[str, Any]) -> None:
        self.jsonl.log(row)
        for mirror in self.mirrors:
            mirror.log(row)

    def summary(self, summary: dict[str, Any]) -> None:
        for mirror in self.mirrors:
            if hasattr(mirror, "summary"):
                mirror.summary(summary)

    def close(self, failed: bool = False) -> None:
        """Close every mirror (each once, even when another fails to close)."""
        mirrors, self.mirrors = self.mirrors, []
        errors = []
        for mirror in mirrors:
            try:
                mirror.close(failed)
            except Exception as e:
                errors.append(e)
        if errors and not failed:
            raise errors[0]

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(failed=exc_type is not None)


def open_tracker(run_dir: Path, cfg: Any, resumed_at: Optional[int] = None) -> Tracker:
    """The tracker of an ``opo train`` run (a :class:`opo.config.Config`): metrics.jsonl, plus
    TensorBoard (``train.tensorboard``) and W&B (``train.wandb.enabled``). ``resumed_at``: the
    checkpoint step a resumed run continues from. A mirror that cannot start raises now, with
    those already started closed."""
    resumed = resumed_at is not None
    tracker = Tracker(JsonlLogger(run_dir / "metrics.jsonl"))
    try:
        if cfg.train.tensorboard:
            tracker.mirrors.append(TensorBoardWriter(run_dir / "tensorboard",
                                                     purge_step=resumed_at + 1 if resumed else None))
        if cfg.train.wandb.enabled:
            tracker.mirrors.append(WandbWriter(cfg.train.wandb, run_dir, cfg.to_dict(), resume=resumed))
    except BaseException:
        tracker.close(failed=True)
        raise
    return tracker
