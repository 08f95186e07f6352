"""Reading JSONL data files one row at a time: a bad row is named by file and line, or (when the
caller's ``skip_bad_rows`` setting says so) left out, named in one warning and counted."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Optional, TypeVar, Union

T = TypeVar("T")


class BadRow(ValueError):
    """Why one row cannot be used (the caller adds file and line)."""


def read_object(raw: bytes) -> Optional[dict]:
    """The JSON object on one line, None for a blank line; BadRow says what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRow(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        return None
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRow(f"not valid JSON ({e.msg})") from None
    if not isinstance(fields, dict):
        raise BadRow("expected a JSON object")
    return fields


def read_rows(path: Path, parse: Callable[[dict, int], T], skip_bad: bool, skip_key: str,
              what: str) -> tuple[list[T], list[str]]:
    """``parse(object, line)`` of every non-blank line of ``path`` and, with ``skip_bad``, a
    'file:line: reason' per row left out (``parse`` raises BadRow for those); without it the first
    bad row raises ValueError naming file and line. ``what`` names the file in messages (e.g.
    'data.path'), ``skip_key`` the setting that skips bad rows. A file without a usable row is an error."""
    if not path.is_file():
        raise ValueError(f"{what} '{path}' does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    rows, skipped = [], []
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                fields = read_object(raw)
                if fields is not None:
                    rows.append(parse(fields, line))
            except BadRow as e:
                if not skip_bad:
                    raise ValueError(f"{path}:{line}: {e}" + (f" ({skip_key}=true skips such rows)" if skip_key else "")) \
                        from None
                skipped.append(f"{path}:{line}: {e}")
    if not rows:
        raise ValueError(f"{what} '{path}' holds no usable rows" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return rows, skipped


def warn_skipped(path: Union[Path, str], reasons: list[str], skip_key: str, shown: int = 5) -> None:
    """One warning naming the first ``shown`` rows left out and how many there were."""
    more = f"; and {len(reasons) - shown} more" if len(reasons) > shown else ""
    print(f"opo: warning: {path}: skipped {len(reasons)} bad row{'s' * (len(reasons) > 1)} ({skip_key}=true): "
          + "; ".join(reasons[:shown]) + more, file=sys.stderr)
