"""The run directory: one run at a time in it, never two runs mixed in it, a resume only with the
run's settings, logs cut back on resume.

Every write that replaces a file goes through a temporary file in the same directory, fsynced and
renamed, so a kill at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Optional

import yaml

from opo import checkpoint
from opo.distributed import Dist
from opo.errors import ConfigError

LOCK = ".lock"
# what a run writes; a directory holding any of these holds a run
RUN_FILES = ("metrics.jsonl", "samples.jsonl", "config.yaml", "summary.json", "checkpoints", "tensorboard",
             "wandb-run-id")


class RunDirLock:
    """An exclusive lock on a run directory for the life of a run (one per torchrun job: rank 0's).

    ``flock`` locks belong to the open file, so the kernel releases them on any exit, SIGKILL
    included. The file names the holder, for the message another run gets.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self._file: Optional[IO[str]] = None

    def __enter__(self) -> "RunDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(f"run.dir {self.path.parent} is in use by another opo run ({holder}); wait for "
                              "it to end, or choose another run.dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def check_writable(path: Path, key: str = "run.dir") -> None:
    """Refuse an output directory that cannot be created or written, before anything is computed."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key} {path} is a file, not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key} {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {path} cannot be written: no write permission on {existing}")


# what may change when a run resumes: how long it runs, what it logs and measures, how it checkpoints
# and where it runs (train.fsdp: checkpoints hold full weights, so a run moves between sharded and
# replicated, and between process counts); not train.eval_max_new_tokens: the prompt-length check,
# and so task.skip_bad_rows, depends on it
RESUMABLE = ("train.fsdp", "train.steps", "train.eval_every", "train.eval_before", "train.eval_n", "train.eval_k",
             "train.eval_temperature", "train.shift_every", "train.tensorboard", "train.wandb", "train.max_bad_steps",
             "train.overwrite", "run.threads", "run.progress", "run.dir", "checkpoint.every", "checkpoint.keep",
             "checkpoint.resume", "checkpoint.allow_changes", "task.grader_workers", "task.grader_timeout",
             "task.reward_timeout", "repetition.n", "repetition.min_count", "hybrid.eval_samples", "hybrid.eval_margin",
             "hybrid.group_by")


FIXED_ON_RESUME = ("model.lora:",)  # the checkpoint holds adapters of these settings, or full weights


def config_changes(before: dict[str, Any], now: dict[str, Any], resumable: tuple[str, ...] = RESUMABLE,
                   defaults: Optional[dict[str, Any]] = None) -> list[str]:
    """``key: before -> now`` for every setting outside ``resumable`` that differs. A setting that
    ``before`` lacks (added by a later version) and ``now`` keeps at its value in ``defaults`` is unchanged."""
    old, new = _flat(before), _flat(now)
    for k, value in _flat(defaults or {}).items():
        old.setdefault(k, value)
    return [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in sorted(old.keys() | new.keys())
            if k not in resumable and old.get(k, "(absent)") != new.get(k, "(absent)")]


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """``{section: {name: value}}`` -> ``{"section.name": value}``; a top-level setting keeps its name."""
    flat: dict[str, Any] = {}
    for section, keys in config.items():
        if isinstance(keys, dict):
            flat.update({f"{section}.{name}": value for name, value in keys.items()})
        else:
            flat[section] = keys
    return flat


@dataclass(frozen=True)
class Claim:
    """What a command's run directory is claimed with: its settings (``config.to_dict()``), whether
    to resume, overwrite or accept changed settings, and which settings may change on resume."""

    settings: dict[str, Any]
    resume: bool
    allow_changes: bool
    overwrite: bool
    overwrite_key: str = "train.overwrite"
    resumable: tuple[str, ...] = RESUMABLE
    defaults: dict[str, Any] = field(default_factory=dict)  # the command's defaults: keys older runs lack


def claim(run_dir: Path, c: Claim, held: contextlib.ExitStack, say: Callable[[str], None],
          d: Dist = Dist()) -> Optional[Path]:
    """Lock ``run_dir`` for the run (rank 0, one lock per job, released when ``held`` closes), refuse
    to mix two runs in it or to resume with other settings, and return the checkpoint to resume from.
    A refusal stops every process with rank 0's message, not at a later collective."""
    refusal, resume_from = None, None
    if d.main:
        try:
            check_writable(run_dir)
            held.enter_context(RunDirLock(run_dir))
            prepare(run_dir, c.resume, c.overwrite, c.overwrite_key)
            resume_from = checkpoint.latest(run_dir / "checkpoints") if c.resume else None
            if resume_from is not None:
                check_same_settings(resume_from, c, say)
        except ConfigError as e:
            refusal = str(e)
    refusal, resume_from = d.broadcast((refusal, resume_from))
    if refusal:
        raise ConfigError(refusal)
    if c.resume and resume_from is None:
        say(f"resume: no complete checkpoint in {run_dir / 'checkpoints'}; starting from step 0")
    return resume_from


def check_same_settings(ckpt: Path, c: Claim, say: Callable[[str], None]) -> None:
    """A resumed run goes on with the settings it started with, unless ``c.allow_changes``."""
    saved = ckpt / "config.yaml"
    try:
        before = yaml.safe_load(saved.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"resume: cannot read the settings of {ckpt} ({saved}: {e})") from e
    changes = config_changes(before, c.settings, c.resumable, c.defaults)
    fixed = [change for change in changes if change.startswith(FIXED_ON_RESUME)]
    if fixed:
        raise ConfigError(f"resume: {'; '.join(fixed)}: the checkpoint's weights were trained with the run's LoRA "
                          f"settings ({saved}), so they cannot change on resume, even with checkpoint.allow_changes; "
                          "start a new run (model.path can be a merged checkpoint)")
    if changes and not c.allow_changes:
        older = "run" not in before  # keys renamed since: the settings cannot be compared one by one
        raise ConfigError(f"resume: these settings differ from the run's ({saved}): {'; '.join(changes)}. "
                          + ("The run was written by an earlier version of opo. " if older else "")
                          + "Resume with the run's settings, or accept the change with checkpoint.allow_changes=true "
                          "(the weights still come from the checkpoint)")
    if changes:
        say(f"resume: continuing with changed settings (checkpoint.allow_changes=true): {'; '.join(changes)}")


def prepare(run_dir: Path, resume: bool, overwrite: bool, overwrite_key: str = "train.overwrite") -> None:
    """Refuse to start a new run where one already is (its checkpoints would be pruned by the new
    run's, its logs appended to); with ``overwrite``, delete the old run first. Removes checkpoint
    directories that a killed save left half-written. Call with the directory locked."""
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if "wandb-run-id" in found and (run_dir / "wandb").is_dir():  # W&B's folder is opo's only beside opo's id
        found.append("wandb")
    if found and not resume:
        if not overwrite:
            last = checkpoint.latest(run_dir / "checkpoints")
            what = f"its last checkpoint is {last.name}" if last else "no complete checkpoint"
            raise ConfigError(
                f"run.dir {run_dir} already holds a run ({', '.join(found)}; {what}). Continue it with "
                f"checkpoint.resume=true, choose a new run.dir, or delete it with {overwrite_key}=true"
            )
        for name in found:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
    checkpoint.remove_partial(run_dir / "checkpoints")


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the rows of steps up to ``last_step`` (-1: none) of a JSONL log, atomically and one line
    at a time. A line that is not a JSON object (what a power loss leaves at the end) is dropped
    with a warning naming the file."""
    if not path.exists():
        return
    tmp = path.with_name(f".{path.name}.tmp")
    dropped = 0
    with open(path, encoding="utf-8", errors="replace") as src, open(tmp, "w", encoding="utf-8") as dst:
        for line in src:
            try:
                keep = json.loads(line)["step"] <= last_step
            except (ValueError, TypeError, KeyError):
                dropped += bool(line.strip())
                continue
            if keep:
                dst.write(line if line.endswith("\n") else line + "\n")
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    checkpoint.fsync_dir(path.parent)
    if dropped:
        print(f"opo: warning: {path}: dropped {dropped} unreadable line(s) (an interrupted write)", file=sys.stderr)
