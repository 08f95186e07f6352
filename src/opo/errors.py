"""Errors that end a command with a message instead of a traceback (the CLI maps them to exit codes)."""


class ConfigError(ValueError):
    """A config key or value that cannot be used (exit 2); the message names the key."""


class TrainingAborted(RuntimeError):
    """The run cannot go on (e.g. gradients kept coming out NaN); the message says why and what to try."""
