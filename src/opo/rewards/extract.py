"""Pull a final answer out of a completion."""

from __future__ import annotations

import re
from typing import Callable, Optional

from opo.registry import Registry

Extractor = Callable[[str], Optional[str]]
EXTRACTORS: Registry[Extractor] = Registry("answer extractor")

_NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")


@EXTRACTORS.register("first_number")
def first_number(text: str) -> Optional[str]:
    """First number in the text (commas as thousands separators allowed), or None."""
    m = _NUMBER.search(text)
    return m.group(0).replace(",", "") if m else None


@EXTRACTORS.register("last_number")
def last_number(text: str) -> Optional[str]:
    """Last number in the text, or None."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


@EXTRACTORS.register("full")
def full_text(text: str) -> Optional[str]:
    """The whole completion, stripped (for tasks whose scorer parses free text)."""
    return text.strip() or None
