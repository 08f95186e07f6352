"""Pull a final answer out of a completion."""

from __future__ import annotations

import re
from typing import Callable, Optional

from opo.registry import Registry

Extractor = Callable[[str], Optional[str]]
EXTRACTORS: Registry[Extractor] = Registry("answer extractor")

# A comma is read only as a thousands separator: a lead group of 1-3 digits (not itself after a digit
# or comma), then groups of exactly three digits, with no digit or comma-digit after the last one.
# Any other comma ("3, 5, 7", "-2,1", "1,2345") separates numbers, so they must not merge into one.
THOUSANDS = r"(?<![\d,])\d{1,3}(?:,\d{3})+(?!,?\d)"
_NUMBER = re.compile(rf"[-+]?(?:(?:{THOUSANDS}|\d+)(?:\.\d+)?|\.\d+)")


def drop_thousands_commas(text: str) -> str:
    """``text`` with the commas of thousands-separated numbers removed (``1,234`` -> ``1234``), other commas kept."""
    return re.sub(THOUSANDS, lambda m: m.group(0).replace(",", ""), text)


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
