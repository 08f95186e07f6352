"""opo report: the HTML holds every plot with one line per run and the configs' differences."""

import json
import re

import pytest
import yaml

from opo.report import PLOTS, group_by_seed, group_name, line_chart, load_run, mean_line, write_report


def fake_run(root, name, lr, steps=6, seed=0, eval_every=0, passes=False):
    run = root / name
    run.mkdir(parents=True)
    rows = [{"step": 0, "eval/accuracy": 0.2}]
    for s in range(1, steps + 1):
        rows.append({"step": s, "reward/mean": 0.1 * s + seed, "entropy": 1.0 / s, "policy_shift/k3": 1e-3 * s,
                     "length/mean": 10 + s, "repetition/ngram_frac": 0.01, "repetition/degenerate": 0.0,
                     "grad_norm": 0.5, "time/step": 12.0})
    if eval_every:
        rows += [{"step": s, "eval/accuracy": 0.3 + 0.01 * s + seed} for s in range(eval_every, steps, eval_every)]
    rows.append({"step": steps, "eval/accuracy": 0.5 + lr})
    if passes:
        for row in rows:
            if "eval/accuracy" in row:
                row.update({"eval/pass@1": row["eval/accuracy"] / 2, "eval/pass@4": row["eval/accuracy"]})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.yaml").write_text(yaml.safe_dump({"optim": {"lr": lr, "eps": 1e-8}, "algo": {"advantage": "opo"},
                                                     "train": {"eval_every": eval_every},
                                                     "run": {"seed": seed, "dir": str(run)}}))
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
        # one line per run; held-out accuracy, measured only before and after training, is two markers each
        assert svg.count("<polyline") == (0 if key.startswith("eval/") else 2), key
        assert 'data-run="opo"' in svg and 'data-run="grpo"' in svg
    diff_rows = re.findall(r'<tr class="diff"><th>([^<]+)</th>', page)
    assert diff_rows == ["optim.lr", "run.dir", "run.seed"]  # the differing keys, listed first
    assert '<tr class="same"><th>algo.advantage</th>' in page
    assert "20.0%" in page and "1.2 min" in page  # 6 steps of 12 s, from metrics.jsonl (survives resumes)
    standalone = (tmp_path / "svg" / "reward_mean.svg").read_text()
    assert standalone.startswith("<svg") and "<style>" in standalone and ">opo</text>" in standalone
    assert len(list((tmp_path / "svg").glob("*.svg"))) == len(PLOTS)


def _chart(page, title):
    return next(svg for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S) if title in svg)


def test_held_out_results_join_into_a_curve_only_where_the_run_evaluated_every_few_steps(tmp_path):
    every = fake_run(tmp_path, "every2", 1e-5, eval_every=2, passes=True)
    ends = fake_run(tmp_path, "ends", 1e-5, passes=True)
    page = write_report([str(every), str(ends)], str(tmp_path / "r.html")).read_text()
    for title in ("Held-out accuracy (greedy)", "Held-out pass@1 (sampled)", "Held-out pass@4 (sampled)"):
        chart = _chart(page, title)
        assert re.findall(r'<polyline[^>]*data-run="(\w+)"', chart) == ["every2"], title
        assert chart.count('<circle') == 4 + 2 and chart.count('data-run="ends"') == 2  # steps 0, 2, 4, 6; 0, 6
    assert "pass@2" not in page  # pass@1 and the largest k only


def test_mean_seeds_draws_one_line_per_group_with_the_seeds_range_shaded(tmp_path):
    runs = [fake_run(tmp_path, "opo-s0", 1e-5, seed=0), fake_run(tmp_path, "opo-s1", 1e-5, seed=1),
            fake_run(tmp_path, "grpo-s0", 2e-5, seed=0)]
    loaded = [load_run(r) for r in runs]
    assert [[r["name"] for r in g] for g in group_by_seed(loaded)] == [["opo-s0", "opo-s1"], ["grpo-s0"]]
    line = mean_line("opo", "#000", group_by_seed(loaded)[0], "reward/mean")
    assert line.points[0] == (1.0, pytest.approx(0.1 + 0.5)) and line.band[0] == (1.0, 0.1, 1.1)
    page = write_report([str(r) for r in runs], str(tmp_path / "r.html"), str(tmp_path / "svg"),
                        mean_seeds=True).read_text()
    reward = _chart(page, "Training reward")
    assert re.findall(r'<polyline[^>]*data-run="([^"]+)"', reward) == ["opo (2 seeds)", "grpo (1 seed)"]
    assert reward.count("<polygon") == 1  # one seed has no range
    assert ">opo (2 seeds)</text>" in (tmp_path / "svg" / "reward_mean.svg").read_text()
    held_out = _chart(page, "Held-out accuracy (greedy)")  # before and after only: no band between them
    assert "<polygon" not in held_out and held_out.count('stroke-width="5"') == 2  # the seeds' range at each


def test_mean_seeds_groups_runs_without_a_config_by_directory_and_keeps_names_that_only_end_in_digits(tmp_path):
    runs = [fake_run(tmp_path, "steps30", 1e-5), fake_run(tmp_path, "other", 1e-5)]
    for r in runs:
        (r / "config.yaml").unlink()
    loaded = [load_run(r) for r in runs]
    assert len(group_by_seed(loaded)) == 2
    assert group_name([loaded[0]]) == "steps30 (1 seed)"
    assert group_name([load_run(fake_run(tmp_path, "a_seed4", 1e-5))]) == "a (1 seed)"


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


# Issue 15: a damaged run or an unwritable output is a warning or one line, never a traceback.


def test_unreadable_config_and_summary_are_warned_about_and_treated_as_empty(tmp_path, capsys):
    a, b = fake_run(tmp_path, "a", 1e-5), fake_run(tmp_path, "b", 2e-5)
    (a / "config.yaml").write_text("optim: {lr: [1e-5\n")  # invalid YAML
    (b / "config.yaml").write_text("- just\n- a list\n")  # YAML, but not a mapping
    (b / "summary.json").write_text('{"before": {"eval/accuracy": 0.2')  # cut short
    page = write_report([str(a), str(b)], str(tmp_path / "r.html")).read_text()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"opo: warning: {a / 'config.yaml'}: ignored, cannot be read (")
    assert err[1] == f"opo: warning: {b / 'config.yaml'}: ignored, it holds a list, not a mapping"
    assert err[2].startswith(f"opo: warning: {b / 'summary.json'}: ignored, cannot be read (")
    assert len(err) == 3 and "optim.lr" not in page
    assert page.count("<polyline") == 2 * (len(PLOTS) - 1)  # no config: held-out results are markers only


def test_metrics_lines_that_are_not_objects_and_a_cut_last_line_are_dropped_with_a_warning(tmp_path, capsys):
    run = fake_run(tmp_path, "run", 1e-5, steps=3)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[1:1] = ["[1, 2]", "3"]  # valid JSON, not objects (lines 2 and 3)
    metrics.write_text("\n".join(lines) + '\n{"step": 4, "reward/mean": 0.')  # power loss mid-row: no newline
    loaded = load_run(run)
    assert [r.get("step") for r in loaded["rows"]] == [0, 1, 2, 3, 3]
    assert capsys.readouterr().err.splitlines() == [
        f"opo: warning: {metrics}:2: dropped a line that is a JSON list, not an object",
        f"opo: warning: {metrics}:3: dropped a line that is a JSON int, not an object",
        f"opo: warning: {metrics}:{len(lines) + 1}: dropped the last line, cut short by an interrupted write "
        "(not valid JSON)",
    ]
    rows = [{"step": "one", "reward/mean": 1}, {"step": [2], "reward/mean": 2}, {"step": 3, "reward/mean": 3}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert write_report([str(run)], str(tmp_path / "r.html")).is_file()  # steps that are not numbers: not plotted


def test_a_run_directory_that_is_missing_or_not_a_run_is_named(tmp_path):
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'nope'} is not an opo run directory: no metrics.jsonl \(the "
                                         r"directory does not exist\)$"):
        write_report([str(tmp_path / "nope")], str(tmp_path / "r.html"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"file is not an opo run directory: no metrics.jsonl \(it is a file\)$"):
        write_report([str(tmp_path / "file")], str(tmp_path / "r.html"))
    with pytest.raises(ValueError, match=f"^{tmp_path} is not an opo run directory: no metrics.jsonl$"):
        write_report([str(tmp_path)], str(tmp_path / "r.html"))


def test_an_output_that_cannot_be_written_is_named_in_one_line(tmp_path):
    import os

    run = [str(fake_run(tmp_path, "run", 1e-5))]
    cases = {
        tmp_path / "missing" / "r.html": f"its directory {tmp_path / 'missing'} does not exist",
        tmp_path / "run": "it is a directory",
        tmp_path / "run" / "config.yaml" / "r.html": "Not a directory",
    }
    (tmp_path / "full.html").symlink_to("/dev/full")  # a real ENOSPC
    cases[tmp_path / "full.html"] = "No space left on device"
    if os.geteuid() != 0:  # root writes into read-only directories
        (tmp_path / "ro").mkdir(mode=0o555)
        cases[tmp_path / "ro" / "r.html"] = "Permission denied"
    for out, why in cases.items():
        with pytest.raises(ValueError) as err:
            write_report(run, str(out))
        assert str(err.value) == f"cannot write the report to {out}: {why}", out
    with pytest.raises(ValueError, match=f"^cannot create the SVG directory {tmp_path / 'run' / 'config.yaml'}: "):
        write_report(run, str(tmp_path / "r.html"), str(tmp_path / "run" / "config.yaml"))
