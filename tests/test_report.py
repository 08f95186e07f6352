"""opo report: the HTML holds every plot with one line per run and the configs' differences."""

import json
import re

import pytest
import yaml

from opo.report import PLOTS, line_chart, load_run, write_report


def fake_run(root, name, lr, steps=6, seed=0):
    run = root / name
    run.mkdir(parents=True)
    rows = [{"step": 0, "eval/accuracy": 0.2}]
    for s in range(1, steps + 1):
        rows.append({"step": s, "reward/mean": 0.1 * s + seed, "entropy": 1.0 / s, "policy_shift/k3": 1e-3 * s,
                     "length/mean": 10 + s, "repetition/ngram_frac": 0.01, "repetition/degenerate": 0.0,
                     "grad_norm": 0.5, "time/step": 12.0})
    rows.append({"step": steps, "eval/accuracy": 0.5 + lr})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.yaml").write_text(yaml.safe_dump({"optim": {"lr": lr, "eps": 1e-8}, "algo": {"advantage": "opo"}}))
    (run / "summary.json").write_text(json.dumps({"before": {"eval/accuracy": 0.2}, "after": {"eval/accuracy": 0.5},
                                                  "wall_time_s": 600}))
    return run


def test_report_has_every_plot_a_line_per_run_and_highlights_differences(tmp_path):
    a, b = fake_run(tmp_path, "opo", 1e-5), fake_run(tmp_path, "grpo", 2e-5, seed=1)
    out = write_report([str(a), str(b)], str(tmp_path / "r.html"), str(tmp_path / "svg"))
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")  # self-contained: nothing to fetch
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) == len(PLOTS)
    for svg, (key, title, _) in zip(svgs, PLOTS):
        assert title in svg
        assert svg.count("<polyline") == 2, key  # one line per run
        assert 'data-run="opo"' in svg and 'data-run="grpo"' in svg
    diff_rows = re.findall(r'<tr class="diff"><th>([^<]+)</th>', page)
    assert diff_rows == ["optim.lr"]  # the only differing key, listed first
    assert '<tr class="same"><th>algo.advantage</th>' in page
    assert "20.0%" in page and "10.0 min" in page
    standalone = (tmp_path / "svg" / "reward_mean.svg").read_text()
    assert standalone.startswith("<svg") and "<style>" in standalone and ">opo</text>" in standalone
    assert len(list((tmp_path / "svg").glob("*.svg"))) == len(PLOTS)


def test_chart_without_data_says_so_and_a_constant_series_still_draws():
    empty = line_chart("Policy shift", "nats", [("run", "#000", [])])
    assert "no data" in empty and "<polyline" not in empty
    flat = line_chart("Flat", "x", [("run", "#000", [(1.0, 0.5), (2.0, 0.5)])])
    assert flat.count("<polyline") == 1 and "nan" not in flat


def test_load_run_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        load_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        load_run(tmp_path)
