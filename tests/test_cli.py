"""End to end through the real CLI on the tiny random model (no download)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.e2e  # subprocesses: `pytest -m "not e2e"` skips them

TINY = ["model.path=tiny", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6",
        "task.eval_size=6", "train.eval_max_new_tokens=6", "run.progress=false", "run.deterministic=true",
        "train.micro_batch_tokens=40", "optim.lr=1e-3"]
REWARD = Path(__file__).parent / "fixtures" / "rewards.py"


def opo(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "opo", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"opo {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def steps(run: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "reward/mean" in r}


def test_help_lists_every_section():
    out = opo("train", "--help").stdout
    for key in ("model.path", "algo.advantage", "rollout.samples_per_prompt", "checkpoint.resume", "optim.lr"):
        assert key in out


def test_bad_setting_exits_2_naming_the_key(tmp_path):
    proc = opo("train", "algo.advantage=nope", f"run_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "algo.advantage='nope'" in proc.stderr


def test_train_writes_metrics_checkpoint_and_summary(tmp_path):
    run = tmp_path / "run"
    proc = opo("train", *TINY, "train.steps=3", "train.eval_every=2", "train.shift_every=2", f"run_dir={run}")
    assert "held-out accuracy: before" in proc.stdout
    rows = steps(run)
    assert sorted(rows) == [1, 2, 3]
    for key in ("reward/mean", "reward/accuracy", "adv/mean", "adv/std", "groups/all_equal", "entropy", "length/mean",
                "length/max", "length/truncated", "grad_norm", "clip_frac", "logprob_gap/mean_abs", "time/generate",
                "time/reward", "time/train", "tokens/generate_per_s", "tokens/train_per_s", "repetition/ngram_frac",
                "repetition/degenerate"):
        assert key in rows[1], key
    assert "eval/accuracy" in rows[2]
    assert "policy_shift/k3" in rows[2] and "policy_shift/k1" in rows[2] and "policy_shift/k3" not in rows[1]
    all_rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in all_rows] == [0, 1, 2, 3, 3]  # before, steps (step 2 carries its eval), after
    assert abs(rows[1]["adv/mean"]) < 1e-6  # OPO: token advantages of each group sum to zero
    summary = json.loads((run / "summary.json").read_text())
    assert {"before", "after", "wall_time_s"} <= set(summary)
    ckpt = run / "checkpoints" / "step_0000003"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.yaml").is_file()
    page = tmp_path / "report.html"
    opo("report", str(run), "-o", str(page))
    assert page.read_text().count("<polyline") >= 8  # every plotted metric of this run has a line
    bad = opo("report", str(tmp_path / "missing"), check=False)
    assert bad.returncode == 2 and "no metrics.jsonl" in bad.stderr


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    # A reward that varies between completions (the random model earns ~0 from the task's own: zero
    # advantages, weights that never move) and a learning rate still warming up at step 3, so a resume
    # that lost AdamW's moments or the scheduler's position ends on other weights.
    args = [*TINY, f"task.reward_fn={REWARD}:varied", "optim.warmup_steps=4", "checkpoint.every=1"]
    full, part = tmp_path / "full", tmp_path / "part"
    opo("train", *args, "train.steps=3", "checkpoint.keep=5", f"run_dir={full}")
    opo("train", *args, "train.steps=2", f"run_dir={part}")
    proc = opo("train", *args, "train.steps=3", "resume=true", f"run_dir={part}")
    assert "continuing from" in proc.stdout
    a, b = steps(full), steps(part)
    assert sorted(b) == [1, 2, 3]
    for key in ("reward/mean", "loss", "grad_norm", "entropy", "length/mean", "logprob_gap/mean_abs", "lr"):
        assert a[3][key] == b[3][key], key
    w = [load_file(full / "checkpoints" / f"step_000000{s}" / "model.safetensors") for s in (1, 2, 3)]
    for before, after in zip(w, w[1:]):
        assert any(not torch.equal(before[k], after[k]) for k in before)  # every step moved the weights
    wb = load_file(part / "checkpoints" / "step_0000003" / "model.safetensors")
    assert [k for k in w[2] if not torch.equal(w[2][k], wb[k])] == []

    again = opo("train", *args, "train.steps=3", "resume=true", f"run_dir={part}", check=False)
    assert again.returncode == 2 and "nothing to train" in again.stderr
    # Stopped during the final evaluation (no summary yet): resuming runs only that evaluation.
    (part / "summary.json").unlink()
    last = opo("train", *args, "train.steps=3", "resume=true", f"run_dir={part}")
    assert "running the final held-out evaluation" in last.stdout
    assert "after" in json.loads((part / "summary.json").read_text()) and sorted(steps(part)) == [1, 2, 3]


def test_resume_needs_an_explicit_run_dir():
    proc = opo("train", *TINY, "resume=true", check=False)
    assert proc.returncode == 2 and "explicit run.dir" in proc.stderr


def test_eval_writes_table_summary_and_samples(tmp_path):
    out = tmp_path / "ev"
    proc = opo("eval", "model.path=tiny", "task=gsm8k", "limit=3", "n=4", "k=1,2,4", "max_new_tokens=5",
               f"out_dir={out}")
    assert "pass@4" in proc.stdout and "maj@2" in proc.stdout
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert {"eval/accuracy", "eval/avg@n", "eval/pass@1", "eval/pass@4", "eval/maj@4", "eval/truncated",
            "eval/repetition", "eval/degenerate"} <= set(metrics)
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * (4 + 1)
    assert {"prompt", "completion", "answer", "reference", "correct", "finish", "length", "repetition",
            "degenerate"} <= set(rows[0])


def test_eval_refuses_k_larger_than_n():
    proc = opo("eval", "model.path=tiny", "n=2", "k=1,4", check=False)
    assert proc.returncode == 2 and "pass@4 needs at least 4 samples" in proc.stderr


def test_diagnose_reports_every_baseline_and_the_length_fit(tmp_path):
    out = tmp_path / "diag"
    proc = opo("diagnose", "model.path=tiny", "prompts=2", "samples=3", "max_new_tokens=5", "task.eval_size=6",
               "run.precision=fp32", f"out_dir={out}")
    for name in ("none", "group_mean", "grpo", "rloo", "opo", "optimal", "Pearson", "exact"):
        assert name in proc.stdout, name
    result = json.loads((out / "diagnose.json").read_text())
    assert len(result["responses"]) == 6 and all(r["sq_grad_norm"] > 0 for r in result["responses"])
    rewards = [r["reward"] for r in result["responses"]]
    if any(rewards):
        assert result["baselines"]["none"]["relative"] == 1.0
    else:  # a random model earns nothing: no variance for any baseline to reduce
        assert all(b["variance"] == 0 and b["relative"] is None for b in result["baselines"].values())
    sketch = opo("diagnose", "model.path=tiny", "prompts=1", "samples=2", "max_new_tokens=3", "task.eval_size=6",
                 "method=sketch", "sketch_dim=1024", f"out_dir={tmp_path / 'sk'}")
    assert "count sketch, 1024 dims" in sketch.stdout


def test_diagnose_refuses_groups_of_one():
    proc = opo("diagnose", "model.path=tiny", "samples=1", check=False)
    assert proc.returncode == 2 and "rollout.samples_per_prompt must be >= 2" in proc.stderr



def test_evaluation_does_not_change_the_training_rollouts(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    opo("train", *TINY, "train.steps=2", "train.eval_n=2", "train.eval_every=1", f"run_dir={a}")
    opo("train", *TINY, "train.steps=2", "train.eval_before=false", f"run_dir={b}")
    ra, rb = steps(a), steps(b)
    for step in (1, 2):
        for key in ("loss", "entropy", "length/mean", "grad_norm"):
            assert ra[step][key] == rb[step][key], (step, key)


def test_eval_refuses_a_prompt_longer_than_the_context_naming_file_and_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "1 + 1?", "answer": "2"}) + "\n"
                    + json.dumps({"question": "seven " * 600, "answer": "7"}) + "\n")
    proc = opo("eval", "model.path=tiny", "task=jsonl", f"data_path={data}", "max_new_tokens=5", check=False)
    assert proc.returncode == 2 and "d.jsonl:2: prompt of" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_refuses_an_unusable_output_directory_before_loading_the_model(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = opo("eval", "model.path=/nonexistent/model", f"out_dir={blocker / 'ev'}", check=False)
    assert proc.returncode == 2 and "is a file" in proc.stderr and "Traceback" not in proc.stderr


def test_ctrl_c_during_eval_keeps_the_finished_problems_and_exits_130(tmp_path, default_sigint):
    import signal
    import time

    out = tmp_path / "ev"
    proc = subprocess.Popen([sys.executable, "-m", "opo", "eval", "model.path=tiny", "task=gsm8k", "limit=200", "n=0",
                             "max_new_tokens=32", "batch_size=2", f"out_dir={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    samples = out / "samples.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (samples.exists() and samples.read_text().count("\n") >= 4):
        time.sleep(0.2)  # samples are written as they are graded
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    summary = json.loads((out / "summary.json").read_text())
    written = [json.loads(line) for line in samples.read_text().splitlines()]
    assert summary["interrupted"] and 4 <= summary["metrics"]["eval/n"] == len(written) < 200
    assert "accuracy" in stdout  # the table of what was finished
