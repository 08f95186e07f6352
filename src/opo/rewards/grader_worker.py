"""A grader worker: calls one function on JSON argument lists, one per line, and answers
``[value, status, detail]`` lines: the result as a finite float (a bool counts as 0/1) and status
``ok``, or value 0.0, status ``error`` and what went wrong (also for a number beyond float32's
range, where the trainer computes advantages: 1e300 would become inf there).

Run by :class:`opo.rewards.grader.GraderPool` as ``python -m opo.rewards.grader_worker SPEC`` with SPEC
``module:function`` or ``path/to/file.py:function``.
"""

import json
import logging
import math
import os
import signal
import sys
from typing import Any, Callable

from opo.rewards.functions import load_function
from opo.rewards.grader import FLOAT32_MAX, READY

BEYOND = "beyond float32 range (3.4e38), where advantages are computed; return a smaller number"


def call(fn: Callable, args: list) -> list:
    """``[value, status, detail]`` of ``fn(*args)``; a bug or a non-number is an error, not a crash."""
    try:
        value: Any = fn(*args)
    except Exception as e:
        return [0.0, "error", f"raised {type(e).__name__}: {e}"]
    try:
        score = math.nan if isinstance(value, (str, bytes)) else float(value)
    except OverflowError:  # e.g. 10**400: finite, but beyond even float64
        shown = f"about 10^{int(abs(value).bit_length() * math.log10(2))}" if isinstance(value, int) \
            else f"a {type(value).__name__} too large for a float"
        return [0.0, "error", f"returned {shown}, {BEYOND}"]
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        return [0.0, "error", f"returned {value!r:.80}, not a finite number"]
    if abs(score) > FLOAT32_MAX:
        return [0.0, "error", f"returned {score:g}, {BEYOND}"]
    return [score, "ok", ""]


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent stops and closes the pool,
    # so a worker ignores it instead of printing a KeyboardInterrupt traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the real stdout; whatever the function prints (Python or C), also while its
    # module is imported, goes to stderr, which the pool shows the user (task.reward_fn) or discards.
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    fn = load_function(sys.argv[1])
    # math-verify warns that its own (signal) timeouts are off: the pool's hard deadline replaces them.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    protocol.write(READY)  # deadlines start now, not while Python and the function's imports load
    protocol.flush()
    for line in sys.stdin:
        result = json.dumps(call(fn, json.loads(line)))
        sys.stderr.flush()  # the call's prints go out before its result
        protocol.write(result + "\n")
        protocol.flush()


if __name__ == "__main__":
    main()
