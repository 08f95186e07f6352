"""``opo report``: one self-contained HTML file overlaying runs' metrics and configs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from opo.report import write_report


def run_report(runs: list[str], out: str, svg_dir: Optional[str] = None, mean_seeds: bool = False) -> Path:
    path = write_report(runs, out, svg_dir, mean_seeds)
    print(f"wrote {path}")
    return path
