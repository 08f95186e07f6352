"""Chat rows that teach a small model the judge's output format only: each pair in the judge prompt,
answered by a bare verdict drawn at random (50/50, independent of which response is correct), so
fine-tuning on them teaches where the verdict goes and nothing about which response is better.

    python experiments/judge_format_rows.py PAIRS.jsonl OUT.jsonl [SEED]
"""

import json
import random
import sys

from opo.judges.verdict import judge_messages


def main(pairs: str, out: str, seed: int = 0) -> None:
    rng = random.Random(seed)
    rows = []
    for line in open(pairs):
        p = json.loads(line)
        first, second = (p["chosen"], p["rejected"]) if rng.random() < 0.5 else (p["rejected"], p["chosen"])
        verdict = f"\\boxed{{Assistant {rng.choice((1, 2))}}}"
        rows.append({"messages": judge_messages(p["query"], first, second) + [{"role": "assistant", "content": verdict}]})
    with open(out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
