"""Judges end to end through the real CLI on the tiny random model: judge rewards in opo train,
best-of-n in opo eval, opo pairs, and training a judge on the preference task."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e  # subprocesses: `pytest -m "not e2e"` skips them

TINY = ["model.path=tiny", "run.progress=false", "task.eval_size=3"]
JUDGE = ["judge.backend=local", "judge.model=tiny", "judge.max_new_tokens=8"]


def opo(*args):
    proc = subprocess.run([sys.executable, "-m", "opo", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"opo {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_train_with_judge_rewards_logs_the_judges_work(tmp_path):
    out = tmp_path / "run"
    proc = opo("train", *TINY, *JUDGE, "judge.reward=knockout", "train.steps=2", "rollout.prompts_per_step=2",
               "rollout.samples_per_prompt=4", "rollout.max_new_tokens=6", "train.eval_max_new_tokens=6",
               f"run.dir={out}")
    assert "judge: verifier_acc" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step = [r for r in rows if "reward/mean" in r][0]
    assert step["judge/calls"] == 2 * 3  # a knockout of 4 per prompt: 3 matches
    assert 0.0 <= step["reward/mean"] <= 1.0 and "judge/verifier_accuracy" in step
    assert "eval/accuracy" in json.loads((out / "summary.json").read_text())["after"]  # the verifier's


def test_eval_best_of_n_and_pairs_then_train_a_judge_on_them(tmp_path):
    ev = tmp_path / "ev"
    proc = opo("eval", *TINY, *JUDGE, "task=reasoning_gym", "n=4", "k=1,4", "max_new_tokens=4", "temperature=1.0",
               f"out_dir={ev}")
    metrics = json.loads((ev / "summary.json").read_text())["metrics"]
    assert {"eval/pick_knockout", "eval/pick_elo", "eval/pick_oracle", "eval/pick_majority",
            "eval/pick_random"} <= set(metrics) and "pick_knockout" in proc.stdout
    assert metrics["eval/judge_calls_knockout"] == 3 * 3 and metrics["eval/judge_calls_elo"] == 3 * 6
    assert set(json.loads((ev / "picks.json").read_text())) == {"knockout", "elo"}
    # the tiny model answers nothing right, so mark some samples correct to have pairs
    rows = [json.loads(line) for line in (ev / "samples.jsonl").read_text().splitlines()]
    for k, r in enumerate(rows):
        r["correct"] = k % 2 == 0
        r["completion"] = f"{r['completion']} #{k}"
    (ev / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = tmp_path / "pairs.jsonl"
    assert "pairs from 3 of 3 problems" in opo("pairs", f"samples={ev / 'samples.jsonl'}", f"out={pairs}").stdout
    out = tmp_path / "judge"
    opo("train", "model.path=tiny", "run.progress=false", "task=preference", f"task.data_path={pairs}",
        "task.eval_size=2", "train.steps=1", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=6", "train.eval_max_new_tokens=6", f"run.dir={out}")
    after = json.loads((out / "summary.json").read_text())["after"]
    assert {"eval/by_chosen_shown/1/accuracy", "eval/by_chosen_shown/2/accuracy"} <= set(after)
