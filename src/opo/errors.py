"""Errors that end a command with a message instead of a traceback (the CLI maps them to exit codes).

``opo.config.ConfigError`` (bad settings, exit 2) lives beside the config it checks.
"""


class TrainingAborted(RuntimeError):
    """The run cannot go on (e.g. gradients kept coming out NaN); the message says why and what to try."""
