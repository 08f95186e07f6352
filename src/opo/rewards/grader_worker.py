"""A grader worker: reads JSON ``[prediction, reference]`` lines, writes ``[correct, status]`` lines.

Run by :class:`opo.rewards.grader.GraderPool` as ``python -m opo.rewards.grader_worker module:function``.
"""

import importlib
import json
import logging
import sys


def main() -> None:
    module, name = sys.argv[1].split(":")
    fn = getattr(importlib.import_module(module), name)
    # math-verify warns that its own (signal) timeouts are off: the pool's hard deadline replaces them.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    for line in sys.stdin:
        pred, ref = json.loads(line)
        try:
            result = [bool(fn(pred, ref)), "ok"]
        except Exception:  # a grader bug on one input is an incorrect answer, not a crash
            result = [False, "error"]
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
