"""Reading settings into nested config dataclasses: a YAML file, then ``key=value`` overrides.

Keys are dotted (``section.name``) and checked as they are set, values coerced to the field's type
hint (``Literal`` choices included), and the messages name the key; :func:`describe` prints every
key with its documentation for ``--help``. The sections themselves live in :mod:`opo.config`.
"""

from __future__ import annotations

import dataclasses
import datetime
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from opo.errors import ConfigError


def _field_names(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]


def _walk(root: Any, key: str) -> tuple[Any, str]:
    """The dataclass holding the last part of a dotted ``key``, and that part; unknown keys raise."""
    parts = key.split(".")
    obj, path = root, []
    for part in parts[:-1]:
        if part not in _field_names(obj) or not dataclasses.is_dataclass(getattr(obj, part)):
            where = ".".join(path) or "the top level"
            sections = [n for n in _field_names(obj) if dataclasses.is_dataclass(getattr(obj, n))]
            raise ConfigError(f"unknown config key '{key}': no section '{part}' at {where}; sections: {', '.join(sections)}")
        obj, path = getattr(obj, part), path + [part]
    if parts[-1] not in _field_names(obj) or dataclasses.is_dataclass(getattr(obj, parts[-1])):
        where = f"keys of '{'.'.join(path)}'" if path else "top-level keys"
        names = [n if not dataclasses.is_dataclass(getattr(obj, n)) else f"{n}.*" for n in _field_names(obj)]
        raise ConfigError(f"unknown config key '{key}'; {where}: {', '.join(names)}")
    return obj, parts[-1]


def get_key(root: Any, key: str) -> Any:
    obj, name = _walk(root, key)
    return getattr(obj, name)


def set_key(root: Any, key: str, value: Any) -> None:
    """Set a dotted ``key`` of a nested dataclass, checking the key exists and the value's type."""
    obj, name = _walk(root, key)
    setattr(obj, name, _coerce(key, value, typing.get_type_hints(type(obj))[name]))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed or isinstance(value, bool):
            raise ConfigError(f"{key}='{value}' is not allowed; choose one of: {', '.join(allowed)}")
        return value
    expected = origin or hint
    if expected is list and isinstance(value, str):  # k=1,4,8
        value = [parse_value(v) for v in value.split(",") if v.strip()]
    elif expected is list and is_number(value):
        value = [value]
    if expected is float and isinstance(value, str) or expected in (dict, list):  # from a YAML file
        value = yaml11_numbers(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is str and (is_number(value) or isinstance(value, datetime.date)):
        return str(value)  # e.g. model.path=1234 names a directory; run.dir: 2026-11-26 in YAML
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        hint_text = ""
        if expected is str and isinstance(value, (dict, list)):
            hint_text = ("; YAML read the value as a mapping or list: quote it, e.g. key: 'Solve: {question}' in a "
                         "file (on the command line key=text is taken as text)")
        raise ConfigError(f"{key} must be {getattr(expected, '__name__', expected)}, got {value!r} "
                          f"({type(value).__name__}){hint_text}")
    return value


def check_types(root: Any, prefix: str = "") -> None:
    """Check every field's value against its type hint, as :func:`set_key` does for a value it sets:
    for a config built or changed in code."""
    hints = typing.get_type_hints(type(root))
    for f in dataclasses.fields(root):
        value = getattr(root, f.name)
        if dataclasses.is_dataclass(value):
            check_types(value, f"{prefix}{f.name}.")
        else:
            _coerce(prefix + f.name, value, hints[f.name])


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``key=value`` as YAML (``1e-5``, ``true``, ``null``, ``{a: 1}``)."""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):  # ValueError: a date-like value that is no date, e.g. 2001-13-01
        return text
    return yaml11_numbers(value)


def yaml11_numbers(value: Any, _inside: frozenset = frozenset()) -> Any:
    """YAML 1.1 reads ``1e-5`` as a string; take it (also inside mappings and lists) as the float a
    user means. A self-containing value (YAML ``&a [*a]``) is returned as it is."""
    if isinstance(value, (dict, list)):
        if id(value) in _inside:
            return value
        inside = _inside | {id(value)}
        if isinstance(value, dict):
            return {k: yaml11_numbers(v, inside) for k, v in value.items()}
        return [yaml11_numbers(v, inside) for v in value]
    if isinstance(value, str) and any(c in value.lower() for c in ".e"):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def text_value(text: str) -> Optional[str]:
    """The right-hand side of ``key=value`` for a text setting: as written (trimmed), so a prompt
    with ': ' or braces is not read as YAML; empty or a YAML null is None; quotes are taken off."""
    t = text.strip()
    if t in ("", "~", "null", "Null", "NULL"):
        return None
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        try:
            unquoted = yaml.safe_load(t)
        except yaml.YAMLError:
            return t
        return unquoted if isinstance(unquoted, str) else t
    return t


def apply_settings(root: Any, path: Optional[str], overrides: list[str], aliases: dict[str, str],
                   moved: dict[str, str]) -> None:
    """Apply the YAML file at ``path`` (nested mappings), then ``key=value`` overrides, to ``root``;
    ``aliases``: short forms of keys; ``moved``: keys of earlier versions and their new names."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (yaml.YAMLError, ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file '{path}' is not valid YAML ({' '.join(str(e).split())}); a value "
                              "holding ': ' or starting with '{' must be quoted, e.g. prompt_template: "
                              "'Solve: {question}'") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections")
        for key, value in _flatten(root, data, path):
            set_key(root, current_key(key, moved), value)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, text = item.split("=", 1)
        key = current_key(aliases.get(key.strip(), key.strip()), moved)
        set_key(root, key, text_value(text) if _is_text(root, key) else parse_value(text))


def current_key(key: str, moved: dict[str, str]) -> str:
    if key in moved:
        raise ConfigError(f"config key '{key}' is now '{moved[key]}'")
    return key


def _is_text(root: Any, key: str) -> bool:
    """True for a field whose value is text (so ``key=Solve: {question}`` is taken as it is written)."""
    obj, name = _walk(root, key)
    hint = typing.get_type_hints(type(obj))[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) in (Union, types.UnionType) else [hint]
    return args == [str]


def _flatten(obj: Any, data: dict, path: str, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested YAML mappings -> (dotted key, value), descending only into config sections."""
    out = []
    for name, value in data.items():
        key = f"{prefix}{name}"
        child = getattr(obj, str(name)) if str(name) in _field_names(obj) else None
        if dataclasses.is_dataclass(child):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: section '{key}' must be a mapping, got {value!r}")
            out += _flatten(child, value, path, key + ".")
        else:
            out.append((key, value))
    return out


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe(root: Any, prefix: str = "") -> str:
    """Every key of a nested config with its type, default and documentation, for ``--help``."""
    lines = []
    hints = typing.get_type_hints(type(root))
    for f in dataclasses.fields(root):
        value = getattr(root, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{prefix}{f.name}:")
            lines.append(describe(value, f"{prefix}{f.name}."))
            continue
        hint = hints[f.name]
        tname = getattr(hint, "__name__", str(hint).replace("typing.", ""))
        if typing.get_origin(hint) is Literal:
            tname = " | ".join(typing.get_args(hint))
        lines.append(f"  {prefix}{f.name} ({tname}, default {value!r})")
        lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)
