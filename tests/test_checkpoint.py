"""Checkpoints you cannot lose (issue 15): a damaged newest checkpoint is skipped for the one before
it, and a disk that fills up during a save or a log write says so in one line and keeps the run
resumable. The disk-full cases use a real ENOSPC: /dev/full, and a small tmpfs mounted in a user
namespace (``unshare -rm``)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from opo import checkpoint
from opo.metrics import JsonlLogger


def _save(tiny, root, step, keep=5, state_bytes=0):
    model, tok = tiny
    state = {"step": step, "blob": torch.zeros(state_bytes // 4)}
    return checkpoint.save(root, step, model, tok, state, {"step": step}, keep)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["truncated weights", "truncated state", "missing state", "missing weights",
                                    "missing settings"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before_with_a_warning(tiny, tmp_path, capsys, damage):
    root = tmp_path / "checkpoints"
    _save(tiny, root, 2)
    newest = _save(tiny, root, 4)
    broken = newest / {"weights": "model.safetensors", "state": checkpoint.STATE_FILE, "settings": "config.yaml"}[
        damage.split()[1]]
    if damage.startswith("truncated"):
        _truncate(broken)
    else:
        broken.unlink()
    capsys.readouterr()  # the saves' progress bars
    assert checkpoint.latest(root) == root / "step_0000002"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"opo: warning: skipping damaged checkpoint {newest}: {broken}")
    assert checkpoint.load_state(root / "step_0000002")["step"] == 2


def test_an_intact_checkpoint_passes_and_a_damaged_newer_one_is_never_pruned_in_favour_of_it(tiny, tmp_path, capsys):
    root = tmp_path / "checkpoints"
    _save(tiny, root, 2)
    _truncate(_save(tiny, root, 4) / "model.safetensors")
    assert checkpoint.latest(root) == root / "step_0000002"  # resume from step 2 ...
    _save(tiny, root, 3, keep=1)  # ... and save step 3 with keep=1: step 2 goes, the damaged step 4 does not count
    assert checkpoint.latest(root) == root / "step_0000003"
    assert checkpoint.damage(root / "step_0000003") is None
    assert "skipping damaged checkpoint" in capsys.readouterr().err


def test_a_log_write_to_a_full_disk_says_so_in_one_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.symlink_to("/dev/full")  # every write fails with ENOSPC
    with pytest.raises(OSError) as err:
        JsonlLogger(log).log({"step": 7, "loss": 1.0})
    assert type(err.value).__name__ == "DiskFull"  # opo.checkpoint.DiskFull, an OSError
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"disk full while writing the row of step 7 to {log}")
    assert "checkpoint.resume=true" in message and isinstance(err.value, OSError)


def _user_namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _user_namespaces_work(), reason="needs unshare -rm (user namespaces) to mount a small tmpfs")
def test_disk_full_during_a_save_and_a_log_write_keeps_the_run_resumable(tmp_path):
    """In a 44 MiB tmpfs: checkpoint 1 (~24 MiB, 8 of them training state) fits; checkpoint 2's weights
    and tokenizer fit, its state file does not (torch.save's error there is a bare RuntimeError)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = f"mount -t tmpfs -o size=44m tmpfs {mnt} && exec {sys.executable} {Path(__file__)} {mnt}"
    child = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    run = mnt / "run"
    assert out["save_error"] == (f"disk full while writing checkpoint step 2 to {run}/checkpoints/step_0000002: the "
                                 f"partial checkpoint is removed and the last good checkpoint "
                                 f"{run}/checkpoints/step_0000001 is kept; free space, then resume the run in {run} "
                                 "with checkpoint.resume=true")
    assert out["save_cause"] == "RuntimeError"  # what torch.save raises on ENOSPC
    assert out["entries"] == ["step_0000001"]  # no partial save left
    assert out["latest"] == f"{run}/checkpoints/step_0000001" and out["state_step"] == 1
    assert out["log_error"].startswith(f"disk full while writing the row of step 2 to {run}/metrics.jsonl")
    assert out["partial_write"] is True  # part of the row fitted ...
    assert out["log_after"] == out["log_before"]  # ... and was taken back: no half line


def _disk_full_child(mnt: Path) -> None:
    """Run inside the tmpfs namespace; prints one JSON line of what happened."""
    from opo.models import load_model

    tiny = load_model("tiny")
    run = mnt / "run"
    root = run / "checkpoints"
    out = {}
    _save(tiny, root, 1, keep=3, state_bytes=8 << 20)
    try:
        _save(tiny, root, 2, keep=3, state_bytes=8 << 20)
    except Exception as e:  # opo.checkpoint.DiskFull
        out["save_error"], out["save_cause"] = str(e), type(e.__cause__).__name__
    out["entries"] = sorted(p.name for p in root.iterdir())
    out["latest"] = str(checkpoint.latest(root))
    out["state_step"] = checkpoint.load_state(checkpoint.latest(root))["step"]
    log = JsonlLogger(run / "metrics.jsonl")
    log.log({"step": 1, "loss": 0.5})
    out["log_before"] = (run / "metrics.jsonl").read_text()
    with open(run / "filler", "wb") as f:  # fill what is left; the log's last page keeps some room
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
    row = {"step": 2, "text": "x" * 20000}  # longer than the room left in the log's last page
    start = os.path.getsize(run / "metrics.jsonl")
    with open(run / "metrics.jsonl", "ab") as probe:  # how much of a row fits: at least a byte, not all
        fits = 0
        try:
            fits = os.write(probe.fileno(), b"y" * 20000)
        except OSError:
            pass
        os.ftruncate(probe.fileno(), start)
    out["partial_write"] = 0 < fits < len(json.dumps(row))
    try:
        log.log(row)
    except OSError as e:  # opo.checkpoint.DiskFull
        out["log_error"] = str(e)
    out["log_after"] = (run / "metrics.jsonl").read_text()
    shutil.rmtree(run)
    print(json.dumps(out))


if __name__ == "__main__":
    _disk_full_child(Path(sys.argv[1]))
