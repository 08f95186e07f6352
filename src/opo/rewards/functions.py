"""Find a Python function named ``module:function`` or ``path/to/file.py:function``, and name a
function object that way (:func:`function_spec`, for the Python API).

Used both to check ``task.reward_fn`` up front and, in each grader worker, to load the function it runs.
Workers are fresh processes (not forks), so a function reaches them only by a name they can import.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable

from opo.errors import ConfigError

# spec -> the function object it was made from in this process (see function_spec)
_NAMED: dict[str, Callable] = {}


def load_function(spec: str) -> Callable:
    """The callable named by ``spec``; ValueError saying what is wrong otherwise (import errors pass through).

    A spec that :func:`function_spec` made in this process gives back that function without importing
    anything: a script's own file is not run a second time to check it."""
    if spec in _NAMED:
        return _NAMED[spec]
    where, _, name = spec.rpartition(":")  # rpartition: a Windows path keeps its drive colon
    if not where or not name:
        raise ValueError(f"'{spec}' must be 'module:function' or 'path/to/file.py:function'")
    if where.endswith(".py"):
        path = Path(where).resolve()
        if not path.is_file():
            raise ValueError(f"file '{where}' does not exist")
        module_name = f"opo_user_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module  # as a normal import would (dataclasses and pickle look it up)
        loader_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = getattr(module, name, None)
    if fn is None:
        raise ValueError(f"'{where}' has no attribute '{name}'")
    if not callable(fn):
        raise ValueError(f"'{where}:{name}' is a {type(fn).__name__}, not a function")
    return fn


def function_spec(fn: Callable, key: str = "task.reward_fn") -> str:
    """The name a fresh process imports ``fn`` by: ``module:function`` for a function defined at the top
    level of an importable module; for one defined in the script being run (``__main__``),
    ``/abs/path/script.py:function``, or ``package.module:function`` under ``python -m``. A worker
    then imports (runs) that script again, as a module, so its training code must sit under
    ``if __name__ == "__main__":``, as with multiprocessing.

    Anything a fresh process cannot find by name (a lambda, a function defined inside another
    function or class, a callable object, a function of an interactive session) raises a one-line
    ConfigError naming ``key``."""
    fix = "define it with def at the top level of a .py file"
    if not inspect.isfunction(fn):
        raise ConfigError(f"{key}: {fn!r} is not a plain Python function; worker processes import the function by "
                          f"name: {fix}, or give its 'module:function' name")
    name, module_name = fn.__name__, fn.__module__
    if name == "<lambda>" or fn.__qualname__ != name:
        what = "a lambda" if name == "<lambda>" else f"{fn.__qualname__}, defined inside a function or class,"
        raise ConfigError(f"{key}: {what} cannot be imported by name in the worker processes that call it: {fix}")
    module = sys.modules.get(module_name)
    if module is None or getattr(module, name, None) is not fn:
        raise ConfigError(f"{key}: {module_name}.{name} is not this function (it was replaced or renamed), so worker "
                          f"processes would import another one: {fix}")
    where = module_name
    if module_name == "__main__":
        main_spec = getattr(module, "__spec__", None)
        file = getattr(module, "__file__", None)
        if main_spec is not None and main_spec.name not in ("__main__", None):
            where = main_spec.name  # python -m package.module
        elif file and file.endswith(".py"):
            where = str(Path(file).resolve())
        else:
            raise ConfigError(f"{key}: {name} is defined in an interactive session (__main__ without a .py file), "
                              f"which worker processes cannot import: {fix} and import it from there")
    spec = f"{where}:{name}"
    _NAMED[spec] = fn
    return spec
