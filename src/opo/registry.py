"""Name -> function registries, so a variant is one decorated function."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, Optional, TypeVar

from opo.errors import ConfigError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """A named table of functions with a clear error for unknown names.

    ``probe(fn, params)`` calls a function on a tiny input, so :meth:`check` can refuse bad
    keyword parameters (unknown names, out-of-range values) before a run starts.
    """

    def __init__(self, kind: str, probe: Optional[Callable[[F, dict], Any]] = None) -> None:
        self.kind = kind
        self.probe = probe
        self._fns: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._fns:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._fns[name] = fn
            return fn

        return deco

    def get(self, name: str) -> F:
        try:
            return self._fns[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} '{name}'; known: {', '.join(sorted(self._fns))}") from None

    def check(self, key: str, name: str, params: Optional[dict] = None, params_key: str = "") -> None:
        """Refuse an unknown ``name`` (config key ``key``) or ``params`` it does not accept (``params_key``)."""
        if name not in self._fns:
            raise ConfigError(f"{key}='{name}' is not allowed; choose one of: {', '.join(self.names())}")
        if not params:
            return
        fn = self._fns[name]
        try:
            inspect.signature(fn).bind_partial(*[None] * _positional(fn), **params)
        except TypeError:
            accepted = [p.name for p in list(inspect.signature(fn).parameters.values())[_positional(fn):]]
            raise ConfigError(f"{params_key}={params} does not fit {key}={name}, which takes: "
                              f"{', '.join(accepted) or 'no parameters'}") from None
        if self.probe is not None:
            try:
                self.probe(fn, params)
            except Exception as e:  # whatever the member raises on these parameters
                raise ConfigError(f"{params_key}={params} cannot be used with {key}={name}: {e}") from None

    def names(self) -> list[str]:
        return sorted(self._fns)

    def __contains__(self, name: str) -> bool:
        return name in self._fns


def _positional(fn: Callable) -> int:
    """Number of leading parameters without a default (the tensors every member takes)."""
    params = inspect.signature(fn).parameters.values()
    return sum(1 for p in params if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD)
