"""The judge contract: (query, response 1, response 2) -> which one is better, why, and whether
the verdict could be read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

STATUSES = ("ok", "no_verdict", "bad_verdict", "timeout", "error")


@dataclass
class Judgment:
    """One judge call. ``choice``: 1 or 2, the response the judge picked in the order shown, or None
    (no verdict: counted and treated as a tie); ``reasoning``: the judge's whole text; ``status``:
    one of :data:`STATUSES` (``timeout``/``error``: the backend gave no text)."""

    choice: Optional[int]
    reasoning: str
    status: str


class Judge(Protocol):
    """Anything that compares responses in batches; ``name`` identifies it in caches and logs. A
    judge that samples with a seed of its own may also offer ``reseed(value: int)``."""

    name: str

    def judge(self, items: list[tuple[str, str, str]]) -> list[Judgment]:
        """One judgment per (query, response 1, response 2), in order. Never raises for one item's
        failure: that item gets status ``timeout`` or ``error``."""
        ...
