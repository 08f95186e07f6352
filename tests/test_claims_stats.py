"""experiments/claims_stats.py: the statistics behind docs/claims.md (t-intervals, paired tests, run figures)."""

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("claims_stats", Path(__file__).parents[1] / "experiments" / "claims_stats.py")
cs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cs)


def test_t_quantiles_and_p_values_match_the_tables():
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 30: 2.042}  # t_{0.975, df}
    for df, t in table.items():
        assert cs.t_quantile(0.975, df) == pytest.approx(t, abs=1e-3)
        assert cs.t_two_sided_p(t, df) == pytest.approx(0.05, abs=1e-4)
    assert cs.t_two_sided_p(0.0, 3) == 1.0
    assert cs.t_two_sided_p(1e4, 1) == pytest.approx(2 / (3.141592653589793 * 1e4), rel=1e-3)  # Cauchy tail


def test_paired_comparison_and_sign_flip_test():
    opo = {0: 0.70, 1: 0.60, 2: 0.65, 3: 0.72, 4: 0.58}
    other = {0: 0.60, 1: 0.55, 2: 0.50, 3: 0.70, 4: 0.50, 5: 0.9}  # seed 5 has no OPO run: not paired
    r = cs.paired(opo, other)
    diffs = [0.10, 0.05, 0.15, 0.02, 0.08]
    assert r["n"] == 5 and r["wins"] == 5 and r["mean"] == pytest.approx(sum(diffs) / 5)
    assert r["p_sign_flip"] == pytest.approx(2 / 32)  # all positive: the smallest p 5 seeds allow
    assert r["ci95"][0] > 0 and r["p_t"] < 0.05
    same = cs.paired({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})
    assert same["p_t"] is None and same["p_sign_flip"] == 0.5  # no spread: the t-test is undefined
    assert cs.sign_flip_p([1.0, -1.0, 2.0, -2.0]) == 1.0
    assert cs.paired({0: 1.0}, {0: 0.0}) is None  # one seed: nothing to test


def _run(root, name, after, stopped=False):
    run = root / name
    run.mkdir(parents=True)
    rows = [{"step": 0, "eval/accuracy": 0.2, "eval/pass@1": 0.1, "eval/pass@4": 0.3, "time/eval": 60.0}]
    rows += [{"step": s, "reward/mean": 0.1 * s, "entropy": 2.0 - 0.1 * s, "length/mean": 10.0, "time/step": 30.0,
              **({"policy_shift/k3": 1e-3} if s % 2 == 0 else {})} for s in range(1, 7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"stopped": "SIGTERM"} if stopped else {"before": {"eval/accuracy": 0.2},
                                                      "after": {"eval/accuracy": after, "eval/pass@1": after / 2,
                                                                "eval/pass@4": after}}
    (run / "summary.json").write_text(json.dumps(summary))


def test_stage_stats_counts_finished_runs_only_and_pairs_by_seed(tmp_path):
    for seed, (a, b) in enumerate([(0.7, 0.6), (0.6, 0.5), (0.8, 0.6)]):
        _run(tmp_path, f"opo-s{seed}", a)
        _run(tmp_path, f"grpo_off-s{seed}", b)
    _run(tmp_path, "rloo-s0", 0.5, stopped=True)  # stopped by a signal: a summary without "after"
    _run(tmp_path, "opo-s0-old", 0.1)  # not a campaign run
    st = cs.stage_stats(tmp_path)
    assert st["unfinished"] == ["rloo-s0"] and set(st["methods"]) == {"opo", "grpo_off"}
    figures = st["methods"]["opo"]["figures"]
    assert figures["greedy"]["mean"] == pytest.approx(0.7) and figures["pass@4"]["n"] == 3
    assert figures["entropy_last5"]["mean"] == pytest.approx(2.0 - 0.1 * 4)  # steps 2-6
    assert figures["policy_shift"]["mean"] == pytest.approx(1e-3) and figures["minutes"]["mean"] == pytest.approx(4.0)
    greedy = st["paired_vs_opo"]["grpo_off"]["greedy"]
    assert greedy["mean"] == pytest.approx(0.4 / 3) and greedy["wins"] == 3 and greedy["p_sign_flip"] == 0.25
    assert st["curves"]["opo"]["eval/accuracy"][0]["mean"] == pytest.approx(0.2)
    assert st["machines"] == {"not recorded": ["grpo_off-s0", "grpo_off-s1", "grpo_off-s2", "opo-s0", "opo-s1", "opo-s2"]}


def test_a_run_kept_as_figures_only_counts_without_a_curve(tmp_path):
    """A run whose files were lost keeps its figures (figures.json): it is paired and averaged, not drawn."""
    for seed in (0, 1):
        _run(tmp_path, f"opo-s{seed}", 0.7)
        (tmp_path / f"opo-s{seed}" / "machine.txt").write_text("cpu: X\nnative bf16: yes\n")
    _run(tmp_path, "rloo-s1", 0.5)
    lost = tmp_path / "rloo-s0"
    lost.mkdir()
    (lost / "figures.json").write_text(json.dumps({"figures": {"greedy": 0.4, "entropy": 1.0, "minutes": 9.0},
                                                   "machine": "cpu: Y"}))
    (tmp_path / "rloo-s1" / "machine.txt").write_text("cpu: X\nnative bf16: yes\n")
    st = cs.stage_stats(tmp_path)
    assert st["methods"]["rloo"]["figures"]["greedy"]["by_seed"] == {0: 0.4, 1: 0.5}
    assert st["paired_vs_opo"]["rloo"]["greedy"]["mean"] == pytest.approx(0.25)
    assert "minutes" not in st["paired_vs_opo"]["rloo"]  # seed 0 ran on another machine: one seed left, no test
    assert st["curves"]["rloo"]["eval/accuracy"][0]["n"] == 1  # only rloo-s1 has a curve
    assert st["machines"] == {"cpu: X; native bf16: yes": ["opo-s0", "opo-s1", "rloo-s1"], "cpu: Y": ["rloo-s0"]}
    assert "- cpu: Y: rloo-s0" in cs.markdown({"stage1": st})


def test_tables_replace_only_the_marked_block(tmp_path):
    page = tmp_path / "claims.md"
    page.write_text(f"intro\n{cs.TABLES_BEGIN}\nold\n{cs.TABLES_END}\nverdicts\n")
    cs.write_tables(page, "new tables")
    assert page.read_text() == f"intro\n{cs.TABLES_BEGIN}\nnew tables\n{cs.TABLES_END}\nverdicts\n"
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(SystemExit, match="no .* block"):
        cs.write_tables(tmp_path / "plain.md", "x")
