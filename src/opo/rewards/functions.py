"""Find a Python function named ``module:function`` or ``path/to/file.py:function``.

Used both to check ``task.reward_fn`` up front and, in each grader worker, to load the function it runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable


def load_function(spec: str) -> Callable:
    """The callable named by ``spec``; ValueError saying what is wrong otherwise (import errors pass through)."""
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
