"""Tracking: metrics.jsonl, TensorBoard and Weights & Biases get the same rows; W&B runs offline here
(never the network) and what it wrote is read back from its transaction log (run-<id>.wandb)."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")

from opo.commands.train import train  # noqa: E402
from opo.config import ConfigError, WandbConfig, load_config  # noqa: E402
from opo.metrics import JsonlLogger  # noqa: E402
from opo.tracking import WANDB_ID_FILE, TensorBoardWriter, Tracker, WandbWriter, open_tracker  # noqa: E402

TINY = ["model.path=tiny", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
        "task.eval_size=2", "train.eval_max_new_tokens=4", "run.progress=false"]
WANDB = ["train.wandb.enabled=true", "train.wandb.mode=offline"]
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # an API key's shape; it must never be written anywhere


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """Everything wandb keeps, here; offline; no error reports sent; its service stopped after the test."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    for var, name in (("WANDB_DIR", "wandb_dir"), ("WANDB_CONFIG_DIR", "wandb_config"),
                      ("WANDB_CACHE_DIR", "wandb_cache"), ("WANDB_DATA_DIR", "wandb_data")):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(var, str(tmp_path / name))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield
    wandb.teardown()


def _records(path: Path):
    """The protobuf records of a .wandb transaction log: a 7-byte header (':W&B', magic 0xBEE1,
    version 0), then LevelDB-log blocks of 32 KiB whose chunks (crc32, length, type) make records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0)
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # padding
            pos += block - pos % block
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL, FIRST / MIDDLE, LAST
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_wandb(run_dir: Path) -> dict:
    """What the offline W&B runs under ``<run_dir>/wandb`` hold, one entry per offline run directory
    in start order: id, name, project, tags, group, config, history rows, summary, exit code."""
    runs = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        out = {"history": [], "summary": {}, "config": {}, "exit_code": None}
        for r in _records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out.update(id=r.run.run_id, name=r.run.display_name, project=r.run.project, tags=list(r.run.tags),
                           group=r.run.run_group, start=r.run.start_time.ToNanoseconds())
                out["config"].update({_key(i): json.loads(i.value_json) for i in r.run.config.update})
            elif kind == "config":
                out["config"].update({_key(i): json.loads(i.value_json) for i in r.config.update})
            elif kind == "history":
                out["history"].append({_key(i): json.loads(i.value_json) for i in r.history.item
                                       if not _key(i).startswith("_")})
            elif kind == "summary":
                out["summary"].update({_key(i): json.loads(i.value_json) for i in r.summary.update})
            elif kind == "exit":
                out["exit_code"] = r.exit.exit_code
        runs.append(out)
    return sorted(runs, key=lambda run: run["start"])


def numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_one_log_writes_the_same_rows_to_jsonl_tensorboard_and_wandb(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logged = [{"step": 0, "eval/accuracy": 0.5, "eval/n": 2},
              {"step": 1, "reward/mean": 0.25, "loss": -1.5, "note": "text", "flag": True},
              {"step": 2, "reward/mean": 0.75, "loss": 2.0, "lr": 1e-5}]
    settings = WandbConfig(enabled=True, mode="offline", name="fan-out", tags=["a", "b"], group="seeds")
    with Tracker(JsonlLogger(run_dir / "metrics.jsonl"),
                 (TensorBoardWriter(run_dir / "tb"), WandbWriter(settings, run_dir, {"x": {"y": 1}}))) as tracker:
        for row in logged:
            tracker.log(row)
        tracker.summary({"after": {"eval/accuracy": 0.75}, "wall_time_s": 3.5, "compute": "cpu"})

    assert rows(run_dir) == logged  # JSONL: every row as it was, text and flags included
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tb = {(e.step, tag): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    expected = {(r["step"], k): v for r in logged for k, v in numbers(r).items() if k != "step"}
    assert tb == pytest.approx(expected)
    [w] = read_wandb(run_dir)
    assert (w["name"], w["project"], w["tags"], w["group"]) == ("fan-out", "opo", ["a", "b"], "seeds")
    assert w["id"] == (run_dir / WANDB_ID_FILE).read_text().strip()
    assert w["config"]["x"] == {"y": 1}
    assert w["history"] == [numbers(r) for r in logged]  # opo's step is a metric of each row, not wandb's step
    assert w["summary"]["after/eval/accuracy"] == 0.75 and w["summary"]["wall_time_s"] == 3.5
    assert w["summary"]["compute"] == "cpu" and w["exit_code"] == 0


def test_tensorboard_of_a_resumed_run_shows_each_step_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = TensorBoardWriter(tmp_path)
    for step in (1, 2, 3):  # the interrupted run got to step 3; its checkpoint is at step 2
        first.log({"step": step, "loss": float(step)})
    first.close()
    resumed = TensorBoardWriter(tmp_path, purge_step=3)
    for step in (3, 4):
        resumed.log({"step": step, "loss": 10.0 * step})
    resumed.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_a_missing_wandb_package_or_a_failed_start_stops_before_training_in_one_line(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"train.wandb.enabled=true needs the wandb package: pip install wandb "
                                          r"\(or pip install 'opo-rl\[wandb\]'\)"):
        WandbConfig(enabled=True).validate()
    WandbConfig(enabled=False).validate()  # not enabled: not needed
    with pytest.raises(ConfigError, match="pip install wandb"):
        open_tracker(tmp_path, load_config(None, [*TINY, *WANDB, f"run.dir={tmp_path}"]))
    monkeypatch.undo()

    def no_key(**kwargs):  # what wandb.init (0.31) raises online without a login; a second line for the test
        raise wandb.errors.UsageError("No API key configured.\nUse `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as failed:
        train(load_config(None, [*TINY, "train.wandb.enabled=true", "train.tensorboard=true", f"run.dir={run_dir}"]))
    message = str(failed.value)
    assert "\n" not in message and "UsageError: No API key configured. Use `wandb login` to log in." in message
    assert "train.wandb.mode=offline" in message and "wandb login" in message
    assert not (run_dir / "metrics.jsonl").exists()  # not even the evaluation before training ran


@pytest.mark.e2e
def test_opo_train_logs_config_metrics_and_summary_to_an_offline_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_API_KEY": FAKE_KEY}
    proc = subprocess.run([sys.executable, "-m", "opo", "train", *TINY, *WANDB, "train.steps=2", f"run.dir={run_dir}",
                           "train.wandb.tags=[smoke, tiny]", "train.wandb.group=seeds"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    [w] = read_wandb(run_dir)
    assert (w["id"], w["name"], w["project"]) == ((run_dir / WANDB_ID_FILE).read_text().strip(), "run", "opo")
    assert (w["tags"], w["group"], w["exit_code"]) == (["smoke", "tiny"], "seeds", 0)
    # the config: the run's own settings, as in config.yaml
    assert w["config"]["train"]["steps"] == 2 and w["config"]["model"]["path"] == "tiny"
    assert w["config"]["train"]["wandb"]["mode"] == "offline" and w["config"]["rollout"]["max_new_tokens"] == 4
    # the metrics: each metrics.jsonl row's numbers, in order (held-out at 0, steps 1 and 2, held-out at 2)
    logged = rows(run_dir)
    assert [r["step"] for r in logged] == [0, 1, 2, 2]
    assert w["history"] == [numbers(r) for r in logged]
    assert [h["step"] for h in w["history"] if "reward/mean" in h] == [1, 2]
    assert {"reward/mean", "loss", "grad_norm", "entropy", "lr"} <= set(w["history"][1])
    # the summary: held-out accuracy before and after, wall time (summary.json flattened with '/')
    summary = json.loads((run_dir / "summary.json").read_text())
    assert w["summary"]["before/eval/accuracy"] == summary["before"]["eval/accuracy"]
    assert w["summary"]["after/eval/accuracy"] == summary["after"]["eval/accuracy"]
    assert w["summary"]["wall_time_s"] == pytest.approx(summary["wall_time_s"])
    assert w["summary"]["run_dir"] == str(run_dir)
    # the API key is wandb's business: in no file of the run (nor anything else written under tmp_path)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written)
    assert not [p for p in written if FAKE_KEY.encode() in p.read_bytes()]
    assert FAKE_KEY not in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_a_run_stopped_after_a_checkpoint_and_resumed_continues_its_wandb_run(tmp_path, sigterm_after_rows):
    run_dir = tmp_path / "run"
    base = [sys.executable, "-m", "opo", "train", *TINY, *WANDB, "train.eval_before=false", "checkpoint.every=1",
            f"run.dir={run_dir}"]
    stopped = sigterm_after_rows([*base, "train.steps=400"], run_dir / "metrics.jsonl", 400)
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    resumed = subprocess.run([*base, f"train.steps={stopped + 1}", "checkpoint.resume=true"], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    first, second = read_wandb(run_dir)
    assert first["id"] == second["id"] == run_id == (run_dir / WANDB_ID_FILE).read_text().strip()
    assert first["exit_code"] == 0 and first["summary"]["stopped"] == "SIGTERM"  # finished on the signal
    assert [h["step"] for h in first["history"]] == list(range(1, stopped + 1))
    assert [h["step"] for h in second["history"]] == [stopped + 1, stopped + 1]  # its step, then the held-out row
    assert second["exit_code"] == 0 and "after/eval/accuracy" in second["summary"]


def test_an_exception_finishes_the_wandb_run_as_failed_and_a_new_run_gets_a_new_id(tmp_path, monkeypatch):
    import opo.commands.train as train_module

    write_logs = train_module._write_logs

    def fail_at_step_2(d, log, samples_log, row, samples):
        write_logs(d, log, samples_log, row, samples)
        if row["step"] == 2:
            raise RuntimeError("boom")

    monkeypatch.setattr(train_module, "_write_logs", fail_at_step_2)
    run_dir = tmp_path / "run"
    args = [*TINY, *WANDB, "train.eval_before=false", "train.steps=3", f"run.dir={run_dir}"]
    with pytest.raises(RuntimeError, match="boom"):
        train(load_config(None, args))
    [crashed] = read_wandb(run_dir)
    assert crashed["exit_code"] == 1 and [h["step"] for h in crashed["history"]] == [1, 2]
    monkeypatch.undo()
    train(load_config(None, [*args, "train.overwrite=true"]))  # a new run in its place: a new W&B run
    [new] = read_wandb(run_dir)  # the old run's W&B folder went with the rest of it
    assert new["id"] != crashed["id"] and new["id"] == (run_dir / WANDB_ID_FILE).read_text().strip()
    assert new["exit_code"] == 0 and [h["step"] for h in new["history"]] == [1, 2, 3, 3]
