"""Errors that end a command with a message instead of a traceback (the CLI maps them to exit codes)."""

import errno


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
