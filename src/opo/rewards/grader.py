"""Math answer extraction and equivalence, with every symbolic check under a hard timeout.

Extraction: the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces, also ``\\boxed 5``), else
GSM8K's ``#### N``, else (configurable) the last number. Equivalence: plain numbers are compared
exactly in the calling process; anything else goes to ``math-verify`` in a worker process that is
killed and replaced when it overruns its deadline. The same :class:`GraderPool` runs users'
reward functions (``task.reward_fn``). Signal-based timeouts (what math-verify uses
by itself) only work on a main thread; a killed process always returns control.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import re
import threading
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from multiprocessing.connection import wait
from typing import Callable, Optional, TextIO

from opo.rewards.extract import THOUSANDS, drop_thousands_commas, last_number

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
    """The answer after the last ``#### ``, thousands separators removed (``3, 5`` stays a list)."""
    found = _GSM8K.findall(text)
    return drop_thousands_commas(found[-1].strip()).rstrip(".") if found else None


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
    """A plain number (``1,234``, ``-0.5``, ``$12``, ``50\\%``, ``\\$3``) as a Decimal, else None.

    Commas count only as thousands separators; a list such as ``3, 5, 7`` or ``-2,1`` is None, so
    it is graded by math-verify instead of being read as 357 or -21.
    """
    # "\!" (negative space) only tightens a separator, as in MATH's "10,\! 080"; drop any space it is followed by.
    s = re.sub(r"\\!\s*", "", text.strip().strip("$")).replace("\\$", "")
    if re.search(r"[\d,]\s+[\d,]", s):  # "3 5 7", "1, 234": separate numbers, not one
        return None
    s = s.replace(" ", "")
    s = re.sub(r"\\?%$", "", s).rstrip(".")
    if s.startswith("\\text{") and s.endswith("}"):
        s = s[6:-1]
    if not re.fullmatch(rf"[-+]?(?:(?:{THOUSANDS}|\d+)(?:\.\d*)?|\.\d+)", s):
        return None
    try:
        return Decimal(s.replace(",", ""))
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


def grade_math(pool: "GraderPool", pairs: list[tuple[Optional[str], str]]) -> list[Grade]:
    """Grade each (extracted prediction or None, reference answer); ``pool`` runs :func:`symbolic_equal`."""
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
    for idx, score in zip(queue, pool.map([list(pairs[i]) for i in queue])):
        out[idx] = Grade(score.value == 1.0, score.status)
    return out  # type: ignore[return-value]


@dataclass
class Score:
    value: float  # the function's result (a bool as 0/1); 0.0 unless status is "ok"
    status: str  # "ok" | "timeout" | "error"


SYMBOLIC_EQUAL = "opo.rewards.grader:symbolic_equal"
READY = "ready\n"  # a worker's first line: the function is loaded; only then does it get a call
STARTUP_TIMEOUT = 120.0  # seconds a worker may take to load its function
FLOAT32_MAX = 3.4028234663852886e38  # rewards become float32 where advantages are computed


WORKER_ENV = "OPO_GRADER_WORKER"  # set in a worker: opo's Python API refuses to train or evaluate there


def worker_env() -> dict[str, str]:
    """A worker's environment: this process's, with this process's import path in front of PYTHONPATH, so
    a worker imports the function's module wherever this process found it (e.g. beside a script run
    from another directory), and :data:`WORKER_ENV` set."""
    paths = [p for p in sys.path if p] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), WORKER_ENV: "1"}


def _forward(stream: TextIO, prefix: str) -> None:
    """Copy a worker's stderr (all its function prints) to this process's stderr, each line
    prefixed, until the worker exits."""
    try:
        for line in stream:
            sys.stderr.write(prefix + line.rstrip("\n") + "\n")
            sys.stderr.flush()
    except (OSError, ValueError):  # our stderr or the pipe was closed: nothing left to show
        pass


class GraderPool:
    """Worker processes that call one function on argument lists, each call under a hard deadline.

    Workers are plain subprocesses (``python -m opo.rewards.grader_worker FN``) speaking JSON
    lines, so they work from any caller (no ``__main__`` guard, no fork of a threaded process).
    A worker that overruns ``timeout`` seconds is killed and replaced; its call gets status
    ``timeout``. A call that raises or returns no finite number, or whose worker dies, gets status
    ``error``, as does a result beyond float32's range (rewards become float32 where advantages are
    computed, so 1e300 would turn into inf there). ``fn`` is ``module:function`` or
    ``path/to/file.py:function``; its arguments must be JSON-serialisable (anything else is sent as
    its ``str``). The first error and the first timeout are reported on stderr with what went wrong;
    later ones are only counted by the caller.

    What the function prints (stdout or stderr, from Python or C, at import or in a call) goes to
    the worker's stderr, never to the protocol's pipe; with ``output`` set it is copied to this
    process's stderr, each line starting with ``output`` (e.g. ``"[reward_fn] "``), by one thread
    per worker; without it (the math checks: math-verify's own chatter) it is discarded.
    """

    def __init__(self, workers: int = 2, timeout: float = 5.0, fn: str = SYMBOLIC_EQUAL,
                 output: Optional[str] = None) -> None:
        self.timeout = timeout
        self.fn = fn
        self.output = output
        self._procs: list[Optional[subprocess.Popen]] = [None] * workers
        self._forwarders: list[Optional[threading.Thread]] = [None] * workers
        self._reported: set[str] = set()
        # workers that have not yet said READY: a call's deadline starts with that line, so start-up
        # (Python and the function's imports, seconds on a busy machine) never counts against it
        self._starting: set[int] = set()

    def _start(self, i: int) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "opo.rewards.grader_worker", self.fn],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if self.output is None else subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=worker_env(),
        )
        self._procs[i] = proc
        if self.output is not None:
            self._forwarders[i] = threading.Thread(target=_forward, args=(proc.stderr, self.output), daemon=True,
                                                   name=f"opo-grader-output-{i}")
            self._forwarders[i].start()
        self._starting.add(i)
        return proc

    def _kill(self, i: int) -> None:
        proc = self._procs[i]
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            stream.close()
        forwarder = self._forwarders[i]
        if forwarder is not None:  # what the worker printed before it died is shown before we go on
            forwarder.join(timeout=2.0)  # longer only if a process the function started holds the pipe
            if not forwarder.is_alive():
                proc.stderr.close()
            self._forwarders[i] = None
        self._procs[i] = None
        self._starting.discard(i)

    def _send(self, i: int, args: list) -> bool:
        """Write one call to worker ``i``; False (and the worker gone) if it has died."""
        try:
            self._procs[i].stdin.write(json.dumps(args, default=str) + "\n")
            self._procs[i].stdin.flush()
            return True
        except OSError:  # e.g. its function could not be loaded
            self._report("error", "worker exited before it was called")
            self._kill(i)
            return False

    def _report(self, status: str, detail: str) -> None:
        if status not in self._reported:
            self._reported.add(status)
            print(f"opo: warning: {self.fn} {detail} (later {status}s are counted, not shown)", file=sys.stderr)

    def map(self, calls: list[list]) -> list[Score]:
        """``fn(*args)`` for each argument list in ``calls``, in order."""
        out: list[Optional[Score]] = [None] * len(calls)
        queue = list(range(len(calls)))
        busy: dict[int, tuple[int, float]] = {}  # worker -> (call, deadline)
        while queue or busy:
            for w in range(len(self._procs)):
                if w not in busy and queue:
                    if self._procs[w] is None:
                        self._start(w)
                    idx = queue.pop(0)
                    if w in self._starting:  # the call goes out when the worker says READY
                        busy[w] = (idx, time.monotonic() + STARTUP_TIMEOUT)
                    elif self._send(w, calls[idx]):
                        busy[w] = (idx, time.monotonic() + self.timeout)
                    else:
                        out[idx] = Score(0.0, "error")
            if not busy:
                continue
            streams = {self._procs[w].stdout: w for w in busy}
            next_deadline = min(d for _, d in busy.values())
            for stream in wait(list(streams), timeout=max(0.0, next_deadline - time.monotonic())):
                w = streams[stream]
                line = stream.readline()
                if line == READY and w in self._starting:  # loaded: send the call, its deadline starts now
                    self._starting.discard(w)
                    if self._send(w, calls[busy[w][0]]):
                        busy[w] = (busy[w][0], time.monotonic() + self.timeout)
                        continue
                    out[busy[w][0]] = Score(0.0, "error")
                if line:
                    value, status, detail = json.loads(line)
                    out[busy[w][0]] = Score(value, status)
                    if status != "ok":
                        self._report(status, detail)
                else:  # the worker died (out of memory, the function called exit, ...)
                    out[busy[w][0]] = Score(0.0, "error")
                    self._report("error", "worker exited during a call")
                    self._kill(w)
                del busy[w]
            now = time.monotonic()
            for w, (idx, deadline) in list(busy.items()):
                if now >= deadline and w in self._starting:
                    out[idx] = Score(0.0, "error")
                    self._report("error", f"worker did not load the function within {STARTUP_TIMEOUT:g} s")
                    self._kill(w)
                    del busy[w]
                elif now >= deadline:
                    out[idx] = Score(0.0, "timeout")
                    self._report("timeout", f"did not return within {self.timeout:g} s; its worker was replaced")
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
