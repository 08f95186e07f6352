"""Math answer extraction and equivalence, with every symbolic check under a hard timeout.

Extraction: the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces, also ``\\boxed 5``), else
GSM8K's ``#### N``, else (configurable) the last number. Equivalence: plain numbers are compared
exactly in the calling process; anything else goes to ``math-verify`` in a worker process that is
killed and replaced when it overruns its deadline. Signal-based timeouts (what math-verify uses
by itself) only work on a main thread; a killed process always returns control.
"""

from __future__ import annotations

import json
import subprocess
import sys
import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from multiprocessing.connection import wait
from typing import Callable, Optional

from opo.rewards.extract import last_number

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K = re.compile(r"####\s*([^\n]+)")


def extract_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` with balanced braces, or ``\\boxed x``."""
    for m in reversed(list(_BOX.finditer(text))):
        rest = text[m.end() :]
        body = rest.lstrip()
        if body.startswith("{"):
            depth = 0
            for j, ch in enumerate(body):
                depth += {"{": 1, "}": -1}.get(ch, 0)
                if depth == 0:
                    return body[1:j].strip()
            continue  # unbalanced: try an earlier box
        if len(body) < len(rest):  # "\boxed 5": the token after the space, up to whitespace or '$'
            token = re.match(r"[^\s$]+", body)
            if token:
                return token.group(0).rstrip(".")
    return None


def extract_gsm8k(text: str) -> Optional[str]:
    """The answer after the last ``#### ``, commas removed."""
    found = _GSM8K.findall(text)
    return found[-1].strip().replace(",", "").rstrip(".") if found else None


EXTRACTION_ORDER = ("boxed", "gsm8k", "last_number")
_EXTRACT: dict[str, Callable[[str], Optional[str]]] = {
    "boxed": extract_boxed, "gsm8k": extract_gsm8k, "last_number": last_number,
}


def extract_answer(text: str, methods: tuple[str, ...] = EXTRACTION_ORDER) -> tuple[Optional[str], Optional[str]]:
    """(answer, method that found it) trying ``methods`` in order; (None, None) if none does."""
    for name in methods:
        answer = _EXTRACT[name](text)
        if answer:
            return answer, name
    return None, None


def as_number(text: str) -> Optional[Decimal]:
    """A plain number (``1,234``, ``-0.5``, ``$12``, ``50\\%``, ``\\$3``) as a Decimal, else None."""
    s = text.strip().strip("$").replace(",", "").replace("\\!", "").replace("\\$", "").replace(" ", "")
    s = re.sub(r"\\?%$", "", s).rstrip(".")
    if s.startswith("\\text{") and s.endswith("}"):
        s = s[6:-1]
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)", s):
        return None
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def symbolic_equal(pred: str, ref: str) -> bool:
    """math-verify equivalence of two extracted answers (runs inside a grader worker)."""
    from math_verify import parse, verify

    # Both sides are already-extracted answers; boxing them gives math-verify its anchor.
    gold = parse(f"\\boxed{{{ref}}}", parsing_timeout=None)
    guess = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    return bool(gold) and bool(guess) and verify(gold, guess, timeout_seconds=None)


@dataclass
class Grade:
    correct: bool
    status: str  # "ok" | "timeout" | "error" | "no_answer"


class GraderPool:
    """Worker processes that grade (prediction, reference) pairs, each under a hard deadline.

    Workers are plain subprocesses (``python -m opo.rewards.grader_worker FN``) speaking JSON
    lines, so they work from any caller (no ``__main__`` guard, no fork of a threaded process).
    A worker that overruns ``timeout`` seconds is killed and replaced; its item is graded
    incorrect with status ``timeout``. ``fn`` names the check as ``module:function``.
    """

    def __init__(self, workers: int = 2, timeout: float = 5.0, fn: str = "opo.rewards.grader:symbolic_equal") -> None:
        self.timeout = timeout
        self.fn = fn
        self._procs: list[Optional[subprocess.Popen]] = [None] * workers
        self.timeouts = 0

    def _start(self, i: int) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "opo.rewards.grader_worker", self.fn],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )
        self._procs[i] = proc
        return proc

    def _kill(self, i: int) -> None:
        proc = self._procs[i]
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            stream.close()
        self._procs[i] = None

    def grade(self, pairs: list[tuple[Optional[str], str]]) -> list[Grade]:
        """Grade each (extracted prediction or None, reference answer)."""
        out: list[Optional[Grade]] = [None] * len(pairs)
        queue = []
        for idx, (pred, ref) in enumerate(pairs):
            if pred is None:
                out[idx] = Grade(False, "no_answer")
                continue
            a, b = as_number(pred), as_number(ref)
            if a is not None and b is not None:  # fast path: exact decimal comparison, no worker
                out[idx] = Grade(a == b, "ok")
            else:
                queue.append(idx)
        busy: dict[int, tuple[int, float]] = {}  # worker -> (item, deadline)
        while queue or busy:
            for w in range(len(self._procs)):
                if w not in busy and queue:
                    proc = self._procs[w] or self._start(w)
                    idx = queue.pop(0)
                    proc.stdin.write(json.dumps([pairs[idx][0], pairs[idx][1]]) + "\n")
                    proc.stdin.flush()
                    busy[w] = (idx, time.monotonic() + self.timeout)
            streams = {self._procs[w].stdout: w for w in busy}
            next_deadline = min(d for _, d in busy.values())
            for stream in wait(list(streams), timeout=max(0.0, next_deadline - time.monotonic())):
                w = streams[stream]
                line = stream.readline()
                if line:
                    correct, status = json.loads(line)
                    out[busy[w][0]] = Grade(correct, status)
                else:  # the worker died (e.g. out of memory)
                    out[busy[w][0]] = Grade(False, "error")
                    self._kill(w)
                del busy[w]
            now = time.monotonic()
            for w, (idx, deadline) in list(busy.items()):
                if now >= deadline:
                    out[idx] = Grade(False, "timeout")
                    self.timeouts += 1
                    self._kill(w)
                    del busy[w]
        return out  # type: ignore[return-value]

    def close(self) -> None:
        for i, entry in enumerate(self._procs):
            if entry is not None:
                self._kill(i)

    def __enter__(self) -> "GraderPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
