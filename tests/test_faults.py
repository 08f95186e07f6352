"""Faults inflicted on a real (tiny) training run, and the outcome each must have."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opo.algos.losses import POLICY_LOSSES, policy_gradient
from opo.config import load_config
from opo.errors import TrainingAborted
from opo.commands.train import train

TINY = ["model.path=tiny", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6",
        "task.eval_size=6", "train.eval_max_new_tokens=6", "run.progress=false", "run.deterministic=true",
        "train.eval_before=false", "optim.lr=1e-3"]


def nan_after_first_call():
    """The on-policy loss, then NaN from the second call on: a forced numerical fault."""
    calls = {"n": 0}

    def loss_fn(logp, old_logp, advantages):
        calls["n"] += 1
        loss, clipped = policy_gradient(logp, old_logp, advantages + 1.0)  # +1: a non-zero gradient
        return (loss if calls["n"] == 1 else loss * float("nan")), clipped

    return loss_fn


def test_nan_loss_skips_steps_then_aborts_leaving_the_checkpoint_intact(tmp_path, monkeypatch):
    monkeypatch.setitem(POLICY_LOSSES._fns, "nan_after_first_step", nan_after_first_call())  # this test only
    run = tmp_path / "run"
    cfg = load_config(None, [*TINY, "algo.loss=nan_after_first_step", "train.steps=10", "train.max_bad_steps=3",
                             "checkpoint.every=1", f"run_dir={run}"])
    with pytest.raises(TrainingAborted, match="NaN/inf in 3 consecutive steps"):
        train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    # the aborting step writes nothing; the skipped steps' checkpoints hold step 1's (finite) weights
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_0000002", "step_0000003"]
    w2 = load_file(run / "checkpoints" / "step_0000002" / "model.safetensors")
    w3 = load_file(run / "checkpoints" / "step_0000003" / "model.safetensors")
    assert all(torch.isfinite(t).all() and torch.equal(t, w3[k]) for k, t in w2.items())


@pytest.mark.e2e
def test_sigterm_finishes_the_step_checkpoints_and_the_run_resumes(tmp_path, sigterm_after_rows):
    run = tmp_path / "run"
    metrics = run / "metrics.jsonl"
    stopped = sigterm_after_rows([sys.executable, "-m", "opo", "train", *TINY, "train.steps=400", f"run_dir={run}"],
                                 metrics, 400)
    assert (run / "checkpoints" / f"step_{stopped:07d}").is_dir()
    resumed = subprocess.run([sys.executable, "-m", "opo", "train", *TINY, f"train.steps={stopped + 2}",
                              f"run_dir={run}", "checkpoint.resume=true"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, stopped + 3)) + [stopped + 2]  # each step once, then the final evaluation


@pytest.mark.e2e
def test_ctrl_c_before_the_training_loop_exits_130_in_one_line(tmp_path, default_sigint):
    """SIGINT during the evaluation before training (no step to finish yet): one line, exit 130,
    the run directory unlocked and resumable."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "opo", "train", *TINY, "train.eval_before=true",
                             "task.eval_size=80", "train.eval_max_new_tokens=64", f"run_dir={run}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    assert proc.stdout.readline().startswith("compute:")  # the model is loaded; evaluation starts
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "opo: interrupted"
    assert "held-out accuracy" not in out  # it stopped inside the evaluation
    resumed = subprocess.run([sys.executable, "-m", "opo", "train", *TINY, "train.steps=1", f"run_dir={run}",
                              "checkpoint.resume=true"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.e2e
def test_sigkill_mid_run_resumes_from_the_last_complete_checkpoint(tmp_path):
    """SIGKILL at an arbitrary moment (checkpoints are written every step, so kills land in writes
    too); the resumed run logs each step once and matches an uninterrupted run."""
    killed, full = tmp_path / "killed", tmp_path / "full"
    # a reward that varies, so every step moves the weights and matching them means something
    varied = Path(__file__).parent / "fixtures" / "rewards.py"
    base = [sys.executable, "-m", "opo", "train", *TINY, "checkpoint.every=1", "train.steps=6",
            f"task.reward_fn={varied}:varied"]
    subprocess.run([*base, f"run_dir={full}"], check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen([*base, f"run_dir={killed}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=60)
    resumed = subprocess.run([*base, f"run_dir={killed}", "checkpoint.resume=true"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 6]
    assert all(r["grad_norm"] > 0 for r in rows if "grad_norm" in r)
    wa = load_file(full / "checkpoints" / "step_0000006" / "model.safetensors")
    wb = load_file(killed / "checkpoints" / "step_0000006" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_partial_checkpoints_are_never_taken_for_complete_ones(tmp_path):
    from opo import checkpoint

    from opo.models import load_model

    root = tmp_path / "checkpoints"
    checkpoint.save(root, 2, *load_model("tiny"), {"step": 2}, {}, keep=3)
    (root / ".step_0000003.tmp123").mkdir()  # a write killed before its rename
    (root / ".step_0000003.tmp123" / checkpoint.STATE_FILE).write_bytes(b"")
    (root / "step_0000004").mkdir()  # a directory without its state file
    assert checkpoint.latest(root) == root / "step_0000002"


def test_a_prompt_longer_than_the_context_stops_training_at_start_or_is_skipped(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(6)]
    rows[3]["question"] = "seven " * 600  # > 512 tokens, the tiny model's context
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    args = [*TINY, "task.name=jsonl", f"task.data_path={data}", "task.eval_size=2", "train.steps=1"]
    with pytest.raises(ValueError, match="d.jsonl:7: not valid JSON"):
        train(load_config(None, [*args, f"run_dir={tmp_path / 'a'}"]))
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="d.jsonl:4: prompt of .* exceeds the model's context of 512"):
        train(load_config(None, [*args, f"run_dir={tmp_path / 'b'}"]))
    assert not (tmp_path / "b" / "metrics.jsonl").exists()  # refused before any step
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    summary = train(load_config(None, [*args, "task.skip_bad_rows=true", f"run_dir={tmp_path / 'c'}"]))
    assert summary["data/skipped_rows"] == 2
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["data/skipped_rows"] == 2
    err = capsys.readouterr().err
    assert "d.jsonl:7: not valid JSON" in err and "d.jsonl:4: prompt of" in err
