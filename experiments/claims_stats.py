"""Statistics of the claims campaign (experiments/claims.sh): per method, the mean and a 95% t-interval
over seeds of each figure; OPO against each other method, paired by seed, with a paired t-test and
an exact sign-flip permutation test. Writes a small JSON (committed) and Markdown tables.

    .venv/bin/python experiments/claims_stats.py experiments/claims_runs --out docs/claims.json --markdown docs/claims.md

--markdown replaces what lies between the file's TABLES_BEGIN and TABLES_END lines (the docs page's
generated part), or writes a new file.

A run counts once it has been evaluated after training; runs still going are listed, never averaged.
A run directory holds what opo wrote (metrics.jsonl, summary.json) and machine.txt, or, for a run whose
files were lost, only figures.json: its figures, without curves. The unit of
replication is the seed: held-out problems are the same in every run, so they are not independent
draws across runs.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Optional

from opo.report import load_run

METHODS = {"opo": "OPO", "grpo": "GRPO on-policy", "grpo_off": "GRPO off-policy", "rloo": "RLOO"}
BASELINE = "opo"
TABLES_BEGIN, TABLES_END = "<!-- tables: experiments/claims_stats.py -->", "<!-- end of tables -->"


def _rows(run: Path) -> list[dict]:
    return load_run(run)["rows"]  # opo report's reader: a line cut short by a kill is dropped with a warning


def _train_rows(rows: list[dict]) -> list[dict]:
    """One row per training step (evaluation rows carry no reward)."""
    return [r for r in rows if "reward/mean" in r]


def _mean_of(rows: list[dict], key: str) -> Optional[float]:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return sum(values) / len(values) if values else None


def finished(run: Path) -> bool:
    """Trained and evaluated after training: a run stopped by a signal also writes summary.json, without "after"."""
    if (run / "figures.json").is_file():
        return True
    try:
        return "after" in json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return False


def run_figures(run: Path) -> dict[str, Optional[float]]:
    """The figures of one finished run: held-out results after training, means over training steps."""
    if (run / "figures.json").is_file():
        return json.loads((run / "figures.json").read_text())["figures"]
    summary = json.loads((run / "summary.json").read_text())
    rows = _rows(run)
    train = _train_rows(rows)
    after, before = summary.get("after", {}), summary.get("before", {})
    ks = sorted(int(k.split("@")[1]) for k in after if k.startswith("eval/pass@"))
    evals = [r for r in rows if "time/eval" in r]
    return {
        "greedy_before": before.get("eval/accuracy"),
        "greedy": after.get("eval/accuracy"),
        "pass@1": after.get("eval/pass@1"),
        f"pass@{ks[-1]}" if ks else "pass@k": after.get(f"eval/pass@{ks[-1]}") if ks else None,
        "entropy": _mean_of(train, "entropy"),
        "entropy_last5": _mean_of(train[-5:], "entropy"),
        "policy_shift": _mean_of(train, "policy_shift/k3"),
        "repetition": _mean_of(train, "repetition/ngram_frac"),
        "degenerate": _mean_of(train, "repetition/degenerate"),
        "eval_repetition": after.get("eval/repetition"),
        "length": _mean_of(train, "length/mean"),
        "reward": _mean_of(train, "reward/mean"),
        "reward_last5": _mean_of(train[-5:], "reward/mean"),
        # Compute time, not wall clock: a resumed run's wall_time_s counts its last process only.
        "minutes": (sum(r.get("time/step", 0.0) for r in train) + sum(r["time/eval"] for r in evals)) / 60,
    }


def curves(run: Path) -> dict[str, dict[int, float]]:
    """Held-out greedy accuracy and pass@k at each evaluated step (none for a run kept as figures only)."""
    out: dict[str, dict[int, float]] = {}
    if not (run / "metrics.jsonl").is_file():
        return out
    for r in _rows(run):
        if "time/eval" in r:
            for key in ("eval/accuracy", "eval/pass@1", "eval/pass@4"):
                if key in r:
                    out.setdefault(key, {})[int(r["step"])] = r[key]
    return out


def machine(run: Path) -> str:
    """Where a run computed: machine.txt (claims.sh writes it), or figures.json's note."""
    if (run / "machine.txt").is_file():
        return "; ".join(line for line in (run / "machine.txt").read_text().splitlines() if line)
    if (run / "figures.json").is_file():
        return json.loads((run / "figures.json").read_text()).get("machine", "not recorded")
    return "not recorded"


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for T ~ Student t with integer ``df``, in closed form (Abramowitz & Stegun 26.7.3-4):
    with theta = atan(|t| / sqrt(df)), P(|T| < |t|) is a finite series in sin and cos of theta."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), the sum absent for df = 1
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * c2
            total += term
        inside = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            total += term
        inside = math.sin(theta) * total
    return max(0.0, 1.0 - inside)


@functools.lru_cache(maxsize=None)
def t_quantile(q: float, df: int) -> float:
    """x with P(T <= x) = q, for q > 0.5, by bisection."""
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 1 - t_two_sided_p(mid, df) / 2 < q else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values: list[float]) -> dict:
    """Mean, sample standard deviation and 95% t-interval over seeds."""
    n = len(values)
    m = statistics.fmean(values)
    if n < 2:
        return {"n": n, "mean": m, "sd": None, "ci95": None}
    sd = statistics.stdev(values)
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": m, "sd": sd, "ci95": [m - half, m + half]}


def sign_flip_p(diffs: list[float]) -> float:
    """Exact two-sided permutation p-value of the mean paired difference (all 2^n sign flips).
    With n seeds it cannot go below 2 / 2^n: 0.0625 at 5 seeds."""
    observed = abs(sum(diffs))
    tie = 1e-9 * max(abs(d) for d in diffs)  # sums equal up to rounding count as at least as extreme
    flips = list(itertools.product((1, -1), repeat=len(diffs)))
    hits = sum(abs(sum(s * d for s, d in zip(signs, diffs))) >= observed - tie for signs in flips)
    return hits / len(flips)


def paired(a: dict[int, float], b: dict[int, float]) -> Optional[dict]:
    """OPO minus another method on the seeds both finished."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds if a[s] is not None and b[s] is not None]
    if len(diffs) < 2:
        return None
    out = mean_ci(diffs)
    sd = out["sd"]
    # Identical differences in every seed leave the t-test undefined (no spread): the sign-flip p stands alone.
    out["p_t"] = t_two_sided_p(out["mean"] / (sd / math.sqrt(len(diffs))), len(diffs) - 1) if sd else None
    out["p_sign_flip"] = sign_flip_p(diffs)
    out["wins"] = sum(d > 0 for d in diffs)
    return out


def stage_stats(root: Path) -> dict:
    runs: dict[str, dict[int, dict]] = {}
    running = []
    where: dict[str, dict[int, str]] = {}
    curve: dict[str, dict[int, dict]] = {}
    for run in sorted(p for p in root.iterdir() if p.is_dir() and "-s" in p.name):
        method, seed = run.name.rsplit("-s", 1)
        if method not in METHODS or not seed.isdigit():
            continue
        if not finished(run):
            running.append(run.name)
            continue
        runs.setdefault(method, {})[int(seed)] = run_figures(run)
        where.setdefault(method, {})[int(seed)] = machine(run)
        curve.setdefault(method, {})[int(seed)] = curves(run)
    methods = [m for m in METHODS if m in runs]
    figures = sorted({k for m in methods for s in runs[m].values() for k in s})
    machines: dict[str, list[str]] = {}
    for m in sorted(where):
        for s in sorted(where[m]):
            machines.setdefault(where[m][s], []).append(f"{m}-s{s}")
    out: dict = {"unfinished": running, "machines": machines, "methods": {}, "paired_vs_opo": {}, "curves": {}}
    for m in methods:
        by_seed = runs[m]
        out["methods"][m] = {"seeds": sorted(by_seed), "figures": {}}
        for f in figures:
            values = [by_seed[s][f] for s in sorted(by_seed) if by_seed[s].get(f) is not None]
            if values:
                out["methods"][m]["figures"][f] = {**mean_ci(values),
                                                   "by_seed": {s: by_seed[s].get(f) for s in sorted(by_seed)}}
        out["curves"][m] = _mean_curves(curve[m])
    if BASELINE in runs:
        for m in methods:
            if m == BASELINE:
                continue
            out["paired_vs_opo"][m] = {}
            for f in figures:
                # Compute time compares only runs of one seed that ran on the same machine.
                same = {s for s in runs[BASELINE] if f != "minutes" or where[BASELINE][s] == where[m].get(s)}
                a = {s: v.get(f) for s, v in runs[BASELINE].items() if s in same}
                b = {s: v.get(f) for s, v in runs[m].items()}
                result = paired(a, b)
                if result:
                    out["paired_vs_opo"][m][f] = result
    return out


def _mean_curves(by_seed: dict[int, dict[str, dict[int, float]]]) -> dict:
    """Per metric and evaluated step: mean and t-interval over the seeds that evaluated it."""
    out: dict = {}
    keys = {k for c in by_seed.values() for k in c}
    for key in sorted(keys):
        steps = sorted({s for c in by_seed.values() for s in c.get(key, {})})
        out[key] = {step: mean_ci([c[key][step] for c in by_seed.values() if step in c.get(key, {})]) for step in steps}
    return out


# Markdown: what the docs page shows.
COLUMNS = [("greedy", "held-out greedy", "pct"), ("pass@1", "pass@1", "pct"), ("pass@4", "pass@4", "pct"),
           ("entropy", "entropy (mean)", "f2"), ("entropy_last5", "entropy (last 5)", "f2"),
           ("policy_shift", "policy shift k3", "e"), ("repetition", "repeated 4-grams", "pct2"),
           ("degenerate", "degenerate", "pct2"),
           ("length", "length (tokens)", "f1"), ("reward_last5", "train reward (last 5)", "f2"),
           ("minutes", "compute (min)", "f1")]


def _fmt(v: Optional[float], kind: str) -> str:
    if v is None:
        return "-"
    return {"pct": f"{100 * v:.1f}", "pct2": f"{100 * v:.2f}", "f1": f"{v:.1f}", "f2": f"{v:.2f}",
            "e": f"{v:.2e}"}[kind]


def _cell(stat: Optional[dict], kind: str) -> str:
    if not stat:
        return "-"
    if stat.get("ci95") is None:
        return _fmt(stat["mean"], kind)
    lo, hi = stat["ci95"]
    return f"{_fmt(stat['mean'], kind)} [{_fmt(lo, kind)}, {_fmt(hi, kind)}]"


def markdown(stats: dict) -> str:
    lines = []
    for stage, st in stats.items():
        lines += [f"### {stage}", ""]
        if st["unfinished"]:
            lines += [f"Unfinished (not counted): {', '.join(st['unfinished'])}.", ""]
        if not st["methods"]:
            lines += ["No finished runs yet.", ""]
            continue
        lines += ["Machines:", ""] + [f"- {where}: {', '.join(sorted(names))}" for where, names in st["machines"].items()]
        lines.append("")
        cols = [c for c in COLUMNS if any(c[0] in m["figures"] for m in st["methods"].values())]
        lines += ["Mean [95% t-interval] over seeds; percentages for accuracy, pass@k and repetition.", "",
                  "| method | seeds | " + " | ".join(c[1] for c in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for m, ms in st["methods"].items():
            lines.append(f"| {METHODS[m]} | {len(ms['seeds'])} | "
                         + " | ".join(_cell(ms["figures"].get(c[0]), c[2]) for c in cols) + " |")
        if not any(st["paired_vs_opo"].values()):
            lines += ["", "Paired comparisons need at least 2 seeds finished by OPO and the other method."]
        else:
            lines += ["", "OPO minus each method, paired by seed: mean difference [95% t-interval], "
                      "paired t-test p, exact sign-flip p, seeds where OPO is higher.", "",
                      "| vs | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
            for m, figs in st["paired_vs_opo"].items():
                cells = []
                for c in cols:
                    d = figs.get(c[0])
                    p_t = "n/a" if d and d["p_t"] is None else f"{d['p_t']:.2f}" if d else ""
                    cells.append("-" if not d else f"{_cell(d, c[2])} p={p_t}/{d['p_sign_flip']:.2f} "
                                                   f"({d['wins']}/{d['n']})")
                lines.append(f"| {METHODS[m]} | " + " | ".join(cells) + " |")
        if not _steps(st):
            continue
        lines += ["", "Held-out curves, mean over the seeds whose curve was kept (their number after the method; "
                  "greedy / pass@1 / pass@4, %):", "",
                  "| method | " + " | ".join(f"step {s}" for s in _steps(st)) + " |", "|---|" + "---|" * len(_steps(st))]
        for m, cv in st["curves"].items():
            cells = []
            for s in _steps(st):
                vals = [cv.get(k, {}).get(s) for k in ("eval/accuracy", "eval/pass@1", "eval/pass@4")]
                cells.append(" / ".join("-" if v is None else f"{100 * v['mean']:.0f}" for v in vals))
            seeds = max((v["n"] for c in cv.values() for v in c.values()), default=0)
            lines.append(f"| {METHODS[m]} ({seeds}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _steps(st: dict) -> list[int]:
    return sorted({s for cv in st["curves"].values() for c in cv.values() for s in c})


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="runs/claims: one directory per stage, holding <method>-s<seed> runs")
    p.add_argument("--out", required=True, help="JSON of all figures and statistics")
    p.add_argument("--markdown", help="also write the tables as Markdown")
    a = p.parse_args(argv)
    root = Path(a.root)
    stages = sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("stage")) if root.is_dir() else []
    if not stages:
        print(f"claims_stats: no stage directories under {root}", file=sys.stderr)
        return 1
    stats = {d.name: stage_stats(d) for d in stages}
    Path(a.out).write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
    if a.markdown:
        write_tables(Path(a.markdown), markdown(stats))
    print(markdown(stats))
    return 0


def write_tables(path: Path, tables: str) -> None:
    """Put ``tables`` between the markers of ``path``, keeping the rest of the page."""
    block = f"{TABLES_BEGIN}\n{tables}\n{TABLES_END}"
    if not path.exists():
        path.write_text(block + "\n")
        return
    text = path.read_text()
    start, end = text.find(TABLES_BEGIN), text.find(TABLES_END)
    if start < 0 or end < start:
        raise SystemExit(f"claims_stats: {path} has no '{TABLES_BEGIN}' ... '{TABLES_END}' block to replace")
    path.write_text(text[:start] + block + text[end + len(TABLES_END):])


if __name__ == "__main__":
    sys.exit(main())
