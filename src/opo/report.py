"""``opo report``: one self-contained HTML file overlaying the metrics of several runs.

Plots are inline SVG drawn here (no plotting library, no script, no network), so the file opens
offline in any browser and diffs cleanly. Each run directory needs ``metrics.jsonl``; its
``config.yaml`` and ``summary.json`` are used when present.
"""

from __future__ import annotations

import html
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import yaml

# (metric key, title, y-axis label); rows of metrics.jsonl carrying the key are plotted against "step".
PLOTS = [
    ("reward/mean", "Training reward", "mean reward"),
    ("eval/accuracy", "Held-out accuracy (greedy)", "accuracy"),
    ("entropy", "Token entropy", "nats / token"),
    ("policy_shift/k3", "Policy shift KL(before || after), k3", "nats / token"),
    ("length/mean", "Response length", "tokens"),
    ("repetition/ngram_frac", "Repeated n-gram fraction", "fraction"),
    ("repetition/degenerate", "Degenerate responses", "fraction"),
    ("grad_norm", "Gradient norm (before clipping)", "L2 norm"),
    ("time/step", "Time per step", "seconds"),
]
# Inside every SVG, so a chart saved on its own (--svg-dir) looks as it does in the page.
SVG_STYLE = ("<style>text{font:11px system-ui,sans-serif;fill:#333}.title{font-size:13px;font-weight:600}"
             ".grid{stroke:#eee}.frame{fill:none;stroke:#999}.empty{fill:#999}</style>")
# Held-out results sampled at temperature 1 (train.eval_n > 0): pass@1, and pass@k for the largest k logged.
PASS_PLOT = ("eval/pass@{k}", "Held-out pass@{k} (sampled)", "pass@{k}")
# Keys that say where and how a run ran, not what it trained: runs differing only in these (and the seed)
# are seeds of one experiment for --mean-seeds.
GROUP_IGNORED = ("run.seed", "run.dir", "run.threads", "run.progress", "checkpoint.resume", "checkpoint.every",
                 "checkpoint.keep", "train.overwrite", "train.wandb.name")
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
          "#7f7f7f"]


def load_run(path: Path) -> dict[str, Any]:
    """A run's metric rows, flattened config and summary; a clear error when it is not a run directory.

    What an interrupted write leaves is read around, with a warning naming the file: a last line
    cut short (no newline, not JSON), a line that is JSON but not an object, a config.yaml or
    summary.json that cannot be read. Any other line that is not JSON is an error naming it."""
    if not path.exists():
        raise ValueError(f"{path} is not an opo run directory: no metrics.jsonl (the directory does not exist)")
    if not path.is_dir():
        raise ValueError(f"{path} is not an opo run directory: no metrics.jsonl (it is a file)")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"{path} is not an opo run directory: no metrics.jsonl")
    try:
        text = metrics.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ValueError(f"cannot read {metrics}: {e.strerror or e}") from None
    lines = text.split("\n")  # the last item is what follows the final newline: "" unless cut short
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):
                _warn(f"{metrics}:{n}: dropped the last line, cut short by an interrupted write (not valid JSON)")
                continue
            raise ValueError(f"{metrics}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            _warn(f"{metrics}:{n}: dropped a line that is a JSON {type(row).__name__}, not an object")
            continue
        rows.append(row)
    config = _read_optional(path / "config.yaml", yaml.safe_load, yaml.YAMLError)
    summary = _read_optional(path / "summary.json", json.loads, ValueError)
    return {"name": path.name or str(path), "path": str(path), "rows": rows, "config": _flatten(config),
            "summary": summary}


def _read_optional(f: Path, parse: Any, error: type) -> dict:
    """The mapping in ``f``, or {} (with a warning naming ``f`` when it exists but is unusable)."""
    if not f.exists():
        return {}
    try:
        value = parse(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, error) as e:
        _warn(f"{f}: ignored, cannot be read ({_first_line(e)})")
        return {}
    if value is None:
        return {}
    if not isinstance(value, dict):
        _warn(f"{f}: ignored, it holds a {type(value).__name__}, not a mapping")
        return {}
    return value


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _warn(message: str) -> None:
    print(f"opo: warning: {message}", file=sys.stderr)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def series(run: dict[str, Any], key: str) -> list[tuple[float, float]]:
    """(step, value) points of ``key``; a step logged twice (the final evaluation) keeps its last value."""
    points: dict[float, float] = {}
    for row in run["rows"]:
        value, step = row.get(key), row.get("step")
        if _finite(value) and _finite(step):
            points[float(step)] = float(value)
    return sorted(points.items())


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def _legend_rows(lines: list[Line], width: int) -> list[list[tuple[str, str]]]:
    """(label, colour) items packed into rows that fit ``width`` (about 6.5 px per character)."""
    rows: list[list[tuple[str, str]]] = [[]]
    used = 0.0
    for label, color, *_ in lines:
        w = 22 + 6.5 * len(label)
        if rows[-1] and used + w > width:
            rows.append([])
            used = 0.0
        rows[-1].append((label, color))
        used += w
    return rows


class Line(NamedTuple):
    """One run's (or one seed group's) series in a chart."""
    label: str
    color: str
    points: list[tuple[float, float]]  # (step, value)
    connect: bool = True  # False: markers only (held-out results measured only before and after training)
    band: tuple = ()  # (step, low, high) per step: the range over a group's seeds, shaded


def _series_svg(lines: list[Line], sx: Callable[[float], float], sy: Callable[[float], float]) -> list[str]:
    """The SVG of each line: its seed band (an area where connected, bars where not), line and markers;
    ``sx``/``sy`` map data to pixel coordinates."""
    out: list[str] = []
    for line in lines:
        if line.connect and len(line.band) > 1:
            edge = [(x, hi) for x, _, hi in line.band] + [(x, lo) for x, lo, _ in reversed(line.band)]
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in edge)
            out.append(f'<polygon points="{coords}" fill="{line.color}" fill-opacity="0.15" stroke="none"/>')
        elif not line.connect:  # no band between steps that were not measured: a bar at each one
            out += [f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{sy(lo):.1f}" y2="{sy(hi):.1f}" stroke="{line.color}" '
                    f'stroke-opacity="0.4" stroke-width="5"/>' for x, lo, hi in line.band]
    for label, color, ps, connect, _ in lines:
        if not ps:
            continue
        if connect:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ps)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.6" '
                       f'data-run="{html.escape(label)}"/>')
        r = 2.5 if len(ps) <= 40 or not connect else 0
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{r}" fill="{color}" data-run="{html.escape(label)}"/>'
                for x, y in ps if r]
    return out


def line_chart(title: str, ylabel: str, lines: list, width: int = 440, height: int = 250,
               legend: bool = False) -> str:
    """An SVG line chart; ``lines`` holds ``Line``s (or (label, colour, points) tuples). Points are also
    marked, so sparse series (held-out evaluations) stay visible. ``legend`` adds the run names below
    the plot (for a chart shown on its own)."""
    lines = [Line(*line) for line in lines]
    left, right, top, bottom = 58, 12, 26, 38
    legend_rows = _legend_rows(lines, width - 20) if legend else []
    plot_height, height = height, height + 16 * len(legend_rows)
    pts = [p for line in lines for p in line.points] + [
        (x, y) for line in lines for x, lo, hi in line.band for y in (lo, hi)]
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">', SVG_STYLE,
           f'<rect width="{width}" height="{height}" fill="#fff"/>']
    for i, row in enumerate(legend_rows):
        x = 10.0
        for label, color in row:
            y = plot_height + 12 + 16 * i
            out.append(f'<rect x="{x:.0f}" y="{y - 8}" width="9" height="9" fill="{color}"/>'
                       f'<text x="{x + 13:.0f}" y="{y}">{html.escape(label)}</text>')
            x += 22 + 6.5 * len(label)
    out += [f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{html.escape(title)}</text>']
    if not pts:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="empty">no data in these runs</text>')
        return "\n".join(out + ["</svg>"])
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) or 1) * 0.1, y1 + (abs(y1) or 1) * 0.1
    yt, xt = _ticks(y0, y1), _ticks(x0, x1)
    y0, y1, x0, x1 = min(yt[0], y0), max(yt[-1], y1), min(xt[0], x0), max(xt[-1], x1)
    pw, ph = width - left - right, plot_height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in xt:
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>')
    out.append(f'<text x="{left + pw / 2}" y="{plot_height - 4}" text-anchor="middle">step</text>')
    out.append(f'<text transform="translate(12 {top + ph / 2}) rotate(-90)" text-anchor="middle">{html.escape(ylabel)}</text>')
    out += _series_svg(lines, sx, sy)
    return "\n".join(out + ["</svg>"])


def config_table(runs: list[dict[str, Any]]) -> str:
    """Configs side by side; keys whose values differ come first and are highlighted."""
    def cell(run: dict[str, Any], k: str) -> str:
        return json.dumps(run["config"][k], default=str) if k in run["config"] else "-"

    def differs(k: str) -> bool:
        return len({cell(r, k) for r in runs}) > 1

    keys = sorted({k for r in runs for k in r["config"]}, key=lambda k: (not differs(k), k))
    head = "".join(f"<th>{html.escape(r['name'])}</th>" for r in runs)
    rows = []
    for k in keys:
        cells = "".join(f"<td>{html.escape(cell(r, k))}</td>" for r in runs)
        rows.append(f'<tr class="{"diff" if differs(k) else "same"}"><th>{html.escape(k)}</th>{cells}</tr>')
    return f'<table class="config"><tr><th>key</th>{head}</tr>\n' + "\n".join(rows) + "</table>"


def summary_table(runs: list[dict[str, Any]], colors: list[str]) -> str:
    """A row per run; ``colors``: each run's colour in the charts."""
    rows = []
    for r, color in zip(runs, colors):
        s = r["summary"]
        cells = [f'<td><span class="swatch" style="background:{color}"></span>'
                 f'{html.escape(r["name"])}</td>']
        for when in ("before", "after"):
            evaluation = s.get(when)
            v = evaluation.get("eval/accuracy") if isinstance(evaluation, dict) else None
            cells.append(f"<td>{v:.1%}</td>" if isinstance(v, (int, float)) else "<td>-</td>")
        for key in ("entropy", "policy_shift/k3", "repetition/degenerate"):
            vals = [v for _, v in series(r, key)]
            cells.append(f"<td>{sum(vals) / len(vals):.4g}</td>" if vals else "<td>-</td>")
        # Steps and evaluations as logged: summary.json's wall_time_s counts only a resumed run's last process.
        seconds = sum(v for key in ("time/step", "time/eval") for _, v in series(r, key))
        cells.append(f"<td>{seconds / 60:.1f} min</td>" if seconds else "<td>-</td>")
        cells.append(f"<td>{html.escape(r['path'])}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = ("<tr><th>run</th><th>held-out accuracy before</th><th>after</th><th>mean entropy</th>"
            "<th>mean policy shift (k3)</th><th>mean degenerate share</th><th>compute time</th><th>directory</th></tr>")
    return f'<table class="summary">{head}\n' + "\n".join(rows) + "</table>"


CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;margin-top:28px}
.charts{display:flex;flex-wrap:wrap;gap:10px}.chart{border:1px solid #ddd}table{border-collapse:collapse;margin-top:8px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:12px}tr.diff{background:#fff3c4}
tr.same{color:#777}.swatch{display:inline-block;width:10px;height:10px;margin-right:6px}
.legend span{margin-right:16px}"""


def plots(runs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """PLOTS, and after held-out accuracy the sampled pass@1 and pass@k (largest k) where runs logged them."""
    ks = sorted({int(m.group(1)) for r in runs for row in r["rows"] for k in row
                 if (m := re.fullmatch(r"eval/pass@(\d+)", k))})
    passes = [tuple(x.format(k=k) for x in PASS_PLOT) for k in dict.fromkeys(ks[:1] + ks[-1:])]
    at = next(i for i, p in enumerate(PLOTS) if p[0] == "eval/accuracy") + 1
    return PLOTS[:at] + passes + PLOTS[at:]


def _connects(key: str, points: list) -> bool:
    """Held-out results join into a curve only where they were measured between the first and the last
    evaluation: a line from before training to after it would draw what was never measured."""
    return not key.startswith("eval/") or len(points) > 2


def group_by_seed(runs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs whose configs are equal apart from GROUP_IGNORED (the seed, the directory, threads), in
    order of first appearance."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        what = {k: v for k, v in r["config"].items() if k not in GROUP_IGNORED} or {"no config": r["path"]}
        groups.setdefault(json.dumps(what, sort_keys=True, default=str), []).append(r)
    return list(groups.values())


def group_name(group: list[dict[str, Any]]) -> str:
    """The first run's name without a seed suffix (opo-s3, grpo_seed1), and the number of seeds."""
    stem = re.sub(r"(?:^|[-_.])(?:s|seed)\d+$", "", group[0]["name"]) or group[0]["name"]
    return f"{stem} ({len(group)} seed{'s' if len(group) > 1 else ''})"


def mean_line(label: str, color: str, group: list[dict[str, Any]], key: str) -> Line:
    """The mean over a group's runs at the steps every run logged, with their range as the band."""
    per_run = [dict(series(r, key)) for r in group]
    steps = sorted(set.intersection(*(set(p) for p in per_run)))
    points = [(s, sum(p[s] for p in per_run) / len(per_run)) for s in steps]
    band = tuple((s, min(p[s] for p in per_run), max(p[s] for p in per_run)) for s in steps) if len(group) > 1 else ()
    return Line(label, color, points, _connects(key, points), band)


def named_groups(runs: list[dict[str, Any]], mean_seeds: bool) -> list[tuple[str, list[dict[str, Any]]]]:
    """What the charts draw a line for: each run, or with ``mean_seeds`` each group of seeds, named."""
    if not mean_seeds:
        return [(r["name"], [r]) for r in runs]
    groups = group_by_seed(runs)
    names = [group_name(g) for g in groups]
    if len(set(names)) < len(names):  # groups of runs named alike: number them
        names = [f"group {i + 1}: {n}" for i, n in enumerate(names)]
    return list(zip(names, groups))


def charts(runs: list[dict[str, Any]], legend: bool = False, mean_seeds: bool = False) -> dict[str, str]:
    """One SVG chart per plotted metric key: a line per run, or with ``mean_seeds`` per group of seeds."""
    lines = named_groups(runs, mean_seeds)
    return {key: line_chart(t, y, [mean_line(n, COLORS[i % len(COLORS)], g, key) for i, (n, g) in enumerate(lines)],
                            legend=legend)
            for key, t, y in plots(runs)}


def render(runs: list[dict[str, Any]], title: Optional[str] = None, mean_seeds: bool = False) -> str:
    """The report as one HTML string."""
    lines = named_groups(runs, mean_seeds)
    names = [n for n, _ in lines]
    color_of = {id(r): COLORS[i % len(COLORS)] for i, (_, g) in enumerate(lines) for r in g}
    legend = "".join(f'<span><span class="swatch" style="background:{COLORS[i % len(COLORS)]}"></span>'
                     f'{html.escape(n)}</span>' for i, n in enumerate(names))
    if mean_seeds:
        legend += "<span>lines: mean over seeds; shaded: their range</span>"
    title = title or "opo report: " + ", ".join(names)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
            f"<h2>Summary</h2>\n{summary_table(runs, [color_of[id(r)] for r in runs])}\n"
            f"<h2>Metrics per step</h2>\n<p class=\"legend\">{legend}</p>\n"
            f"<div class=\"charts\">\n" + "\n".join(charts(runs, mean_seeds=mean_seeds).values()) + "\n</div>\n"
            f"<h2>Configurations (differences highlighted)</h2>\n{config_table(runs)}\n</body></html>\n")


def write_report(run_dirs: list[str], out: str, svg_dir: Optional[str] = None, mean_seeds: bool = False) -> Path:
    """Render the runs in ``run_dirs`` into the HTML file ``out`` (and, with ``svg_dir``, each chart
    into its own SVG file there, with a legend, e.g. for a README); returns the HTML file's path.
    ``mean_seeds``: one line per group of runs that differ only in their seed (``group_by_seed``)."""
    runs = [load_run(Path(d)) for d in run_dirs]
    names = [r["name"] for r in runs]
    for r in runs:  # two runs named alike (a/run, b/run) keep their parent's name too
        if names.count(r["name"]) > 1:
            r["name"] = f"{Path(r['path']).parent.name}/{r['name']}"
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"cannot write the report to {path}: it is a directory")
    _write(path, render(runs, mean_seeds=mean_seeds), "the report")
    if svg_dir is not None:
        try:
            Path(svg_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create the SVG directory {svg_dir}: {e.strerror or e}") from None
        for key, svg in charts(runs, legend=True, mean_seeds=mean_seeds).items():
            _write(Path(svg_dir, key.replace("/", "_") + ".svg"), svg, "a chart")
    return path


def _write(path: Path, text: str, what: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        why = e.strerror or str(e)
        if isinstance(e, FileNotFoundError) and not path.parent.is_dir():
            why = f"its directory {path.parent} does not exist"
        raise ValueError(f"cannot write {what} to {path}: {why}") from None
