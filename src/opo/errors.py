"""Errors that end a command with a message instead of a traceback (the CLI maps them to exit codes)."""

import errno
import shutil
from pathlib import Path
from typing import Optional


class ConfigError(ValueError):
    """A config key or value that cannot be used (exit 2); the message names the key."""


class TrainingAborted(RuntimeError):
    """The run cannot go on (e.g. gradients kept coming out NaN); the message says why and what to try."""


class DiskFull(OSError):
    """The disk (or the quota) filled up while writing a checkpoint or a log. The partial write is
    undone, earlier checkpoints are kept and the run can be resumed; the message says so in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28)", "os error 122)")
_LOW_SPACE = 64 << 20  # bytes: a write failing with less than this free is taken for a full disk


def is_disk_full(exc: BaseException, where: Optional[Path] = None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or quota. torch.save
    reports one as a bare ``RuntimeError`` ("unexpected pos ..."), so a failed write with less than
    64 MiB left on ``where``'s file system counts too."""
    seen: set[int] = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if any(t in str(e) for t in _FULL_TEXTS):
            return True
        e = e.__cause__ or e.__context__
    if where is not None and isinstance(exc, (OSError, RuntimeError)):
        try:
            return shutil.disk_usage(where).free < _LOW_SPACE
        except OSError:
            return False
    return False
