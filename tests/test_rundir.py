"""The run directory: a new run never mixes with an old one, two runs never share one, a resume
cuts the logs back atomically, and half-written checkpoints do not pile up."""

import json
import os

import pytest

from opo import rundir
from opo.config import ConfigError, load_config
from opo.commands.train import train

TINY = ["model.path=tiny", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
        "task.eval_size=2", "train.eval_max_new_tokens=4", "run.progress=false", "train.eval_before=false",
        "checkpoint.every=1", "checkpoint.keep=2"]


def run(path, *settings):
    return train(load_config(None, [*TINY, f"run.dir={path}", *settings]))


def steps(path, name="metrics.jsonl"):
    return [json.loads(line)["step"] for line in (path / name).read_text().splitlines()]


def test_a_new_run_into_an_old_runs_directory_is_refused_unless_overwritten(tmp_path):
    run(tmp_path, "train.steps=3")
    with pytest.raises(ConfigError, match=r"already holds a run .*step_0000003.*checkpoint.resume=true"):
        run(tmp_path, "train.steps=1")
    assert steps(tmp_path) == [1, 2, 3, 3]  # the old run is untouched (its last row: the final evaluation)
    run(tmp_path, "train.steps=1", "train.overwrite=true")
    assert steps(tmp_path) == [1, 1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000001"]


def test_a_second_run_on_a_locked_directory_is_refused_naming_the_holder(tmp_path):
    with rundir.RunDirLock(tmp_path):  # held as a running job holds it (flock: per open file)
        with pytest.raises(ConfigError, match=rf"in use by another opo run \(pid {os.getpid()} on "):
            run(tmp_path, "train.steps=1", "checkpoint.resume=true")
    run(tmp_path, "train.steps=1")  # released: the directory is free again


def test_resume_without_a_checkpoint_starts_the_logs_afresh(tmp_path):
    # what a kill before the first complete checkpoint leaves: logs, no checkpoint
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.5}\n{"step": 1, "loss": 1.0}\n')
    (tmp_path / "checkpoints" / ".step_0000001.abc").mkdir(parents=True)  # a killed save's temporary directory
    run(tmp_path, "train.steps=2", "checkpoint.resume=true")
    assert steps(tmp_path) == [1, 2, 2]
    assert not list((tmp_path / "checkpoints").glob(".step_*"))


def test_truncating_a_log_keeps_earlier_rows_drops_a_partial_line_and_is_atomic(tmp_path, capsys, monkeypatch):
    log = tmp_path / "samples.jsonl"
    rows = "".join(json.dumps({"step": s, "x": "y" * 50}) + "\n" for s in (0, 1, 2, 3))
    log.write_text(rows + '{"step": 4, "x": "tru')  # a power loss mid-line
    rundir.truncate_log(log, 2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1, 2]
    assert "samples.jsonl: dropped 1 unreadable line" in capsys.readouterr().err
    before = log.read_text()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))  # killed at the swap
    with pytest.raises(KeyboardInterrupt):
        rundir.truncate_log(log, 0)
    assert log.read_text() == before  # the log is whole: the new one was only a temporary file


def test_resume_with_changed_settings_is_refused_showing_the_difference(tmp_path):
    import yaml

    run(tmp_path, "train.steps=1")
    with pytest.raises(ConfigError, match=r"differ from the run's .*algo.advantage: 'opo' -> 'grpo'.*"
                                          r"model.path: 'tiny' -> 'other'.*checkpoint.allow_changes=true"):
        run(tmp_path, "train.steps=2", "checkpoint.resume=true", "algo.advantage=grpo", "model.path=other")
    assert steps(tmp_path) == [1, 1]  # refused before anything was written
    # what may change: the length of the run, logging, evaluation and checkpointing
    run(tmp_path, "train.steps=2", "checkpoint.resume=true", "checkpoint.keep=3", "train.shift_every=1")
    assert steps(tmp_path) == [1, 1, 2, 2]  # step 1 also holds that run's final evaluation
    # an explicit yes resumes, and config.yaml then records the settings the run goes on with
    run(tmp_path, "train.steps=3", "checkpoint.resume=true", "algo.advantage=grpo", "checkpoint.allow_changes=true")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["algo"]["advantage"] == "grpo"


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_a_run_dir_that_cannot_be_a_directory_is_refused_before_the_model_loads(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    target = blocker if where == "file" else blocker / "run"
    with pytest.raises(ConfigError, match="is a file"):
        run(target, "model.path=/nonexistent/model")  # the model is never reached


def test_a_run_started_with_overwrite_resumes_without_allow_changes(tmp_path):
    run(tmp_path, "train.steps=1", "train.overwrite=true")
    run(tmp_path, "train.steps=2", "checkpoint.resume=true")
    assert steps(tmp_path)[-1] == 2


def test_a_setting_added_since_the_run_started_is_no_change_at_its_default():
    # a run saved before the hybrid section existed resumes; turning hybrid thinking on is a change
    saved = load_config().to_dict()
    del saved["hybrid"]
    defaults = load_config().to_dict()
    assert rundir.config_changes(saved, load_config().to_dict(), defaults=defaults) == []
    now = load_config(overrides=["hybrid.enabled=true"]).to_dict()
    assert rundir.config_changes(saved, now, defaults=defaults) == ["hybrid.enabled: False -> True"]
    assert len(rundir.config_changes(saved, load_config().to_dict())) == 5  # without defaults: each new key but 3 resumable ones


def test_lora_settings_cannot_change_on_resume_even_when_changes_are_allowed(tmp_path):
    run(tmp_path, "train.steps=1", "model.lora.rank=2")
    for change in ("model.lora.rank=4", "model.lora.rank=0"):  # other adapters; full weights from an adapter
        with pytest.raises(ConfigError, match=r"model.lora: .*cannot change on resume"):
            run(tmp_path, "train.steps=2", "checkpoint.resume=true", "checkpoint.allow_changes=true", change)
    run(tmp_path, "train.steps=2", "checkpoint.resume=true", "model.lora.rank=2")
    assert steps(tmp_path) == [1, 1, 2, 2]


def test_a_wandb_folder_is_the_runs_only_beside_its_run_id(tmp_path):
    (tmp_path / "wandb").mkdir()  # W&B's default folder of some other project
    (tmp_path / "wandb" / "offline-run-x").mkdir()
    run(tmp_path, "train.steps=1")  # not taken for an earlier run
    run(tmp_path, "train.steps=1", "train.overwrite=true")
    assert (tmp_path / "wandb" / "offline-run-x").is_dir()  # and never deleted
    (tmp_path / "wandb-run-id").write_text("abc\n")  # an opo run's W&B folder: replaced with the run
    run(tmp_path, "train.steps=1", "train.overwrite=true")
    assert not (tmp_path / "wandb").exists()
