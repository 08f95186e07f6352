"""Atomic checkpoints: model (HF safetensors), optimizer, scheduler, RNG states, data position, config.

A checkpoint is written into a temporary directory, every file is fsynced, and the directory is
renamed to ``step_NNNNNNN``: a directory with that name is always complete. Training state loads
with ``weights_only=True``, so reading a checkpoint never executes code.

A checkpoint damaged afterwards (a truncated copy, a disk error) is detected cheaply by
:func:`latest` (safetensors headers against file sizes, the state file's zip directory), which then
falls back to the newest intact one with a warning. A disk that fills up during a save raises
:class:`DiskFull`, removes the partial save and keeps the previous checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from opo import lora
from opo.errors import DiskFull, is_disk_full

_NAME = re.compile(r"^step_(\d{7})$")
STATE_FILE = "trainer_state.pt"


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    """The global RNG states (the sampler is reseeded every step and needs none)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    state: dict[str, Any],
    config: dict[str, Any],
    keep: int,
    weights: Optional[dict[str, torch.Tensor]] = None,
    adapters: Any = None,
    merged: bool = False,
) -> Path:
    """Write checkpoint ``step`` atomically under ``ckpt_root`` and prune to the last ``keep``;
    ``weights``: the model's full state dict where its own is sharded. With LoRA ``adapters`` (the
    PEFT wrapper) the checkpoint holds the adapter, and with ``merged`` also the merged model."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    remove_partial(ckpt_root)
    final = ckpt_root / f"step_{step:07d}"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:07d}.", dir=ckpt_root))
    except OSError as e:  # not even a directory entry fits
        if is_disk_full(e):
            raise DiskFull(_disk_full_message(ckpt_root, step)) from e
        raise
    try:
        if adapters is None:
            model.save_pretrained(tmp, state_dict=weights)
        else:
            lora.save(adapters, tmp, weights)
            if merged:
                lora.save_merged(model, tokenizer, tmp / lora.MERGED_DIR, weights)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / STATE_FILE)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_tree(ckpt_root)
    except Exception as e:
        if not is_disk_full(e, tmp):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise DiskFull(_disk_full_message(ckpt_root, step)) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # only checkpoints up to this step count: a newer one is a damaged one that resuming skipped
    # (it is replaced when training reaches its step again)
    done = [p for p in complete_checkpoints(ckpt_root) if _step_of(p) <= step]
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _disk_full_message(ckpt_root: Path, step: int) -> str:
    final = ckpt_root / f"step_{step:07d}"
    kept = _newest_intact([p for p in _step_dirs(ckpt_root) if p != final], warn=False)
    return (f"disk full while writing checkpoint step {step} to {final}: the partial checkpoint is removed and "
            + (f"the last good checkpoint {kept} is kept" if kept else "no earlier checkpoint exists")
            + f"; free space, then resume the run in {ckpt_root.parent} with checkpoint.resume=true")


def remove_partial(ckpt_root: Path) -> None:
    """Delete the temporary directories of saves that were killed (up to 1.6 GB each for the
    embedded model); only the run holding the run directory's lock writes here."""
    if ckpt_root.is_dir():
        for p in ckpt_root.glob(".step_*"):
            shutil.rmtree(p, ignore_errors=True)


def _step_of(p: Path) -> int:
    return int(_NAME.match(p.name).group(1))


def _step_dirs(ckpt_root: Path) -> list[Path]:
    """Directories named ``step_NNNNNNN``, oldest first."""
    if not ckpt_root.is_dir():
        return []
    return sorted((p for p in ckpt_root.iterdir() if p.is_dir() and _NAME.match(p.name)), key=_step_of)


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first (temporary ones are ignored)."""
    return [p for p in _step_dirs(ckpt_root) if (p / STATE_FILE).is_file()]


def latest(ckpt_root: Path) -> Optional[Path]:
    """The newest intact checkpoint under ``ckpt_root`` (None if there is none). A newer one that
    is damaged (see :func:`damage`) is skipped with a warning naming the broken file."""
    return _newest_intact(_step_dirs(ckpt_root), warn=True)


def _newest_intact(candidates: list[Path], warn: bool) -> Optional[Path]:
    for ckpt in reversed(candidates):
        problem = damage(ckpt)
        if problem is None:
            return ckpt
        if warn and os.environ.get("RANK", "0") == "0":  # one warning for a run of several processes
            print(f"opo: warning: skipping damaged checkpoint {ckpt}: {problem}", file=sys.stderr)
    return None


def damage(ckpt: Path) -> Optional[str]:
    """What is wrong with checkpoint directory ``ckpt`` (naming the file), or None if it looks intact.

    Cheap (no tensor is read): the state file's zip directory must be readable (it sits at the
    file's end, so a truncated file has none), config.json and config.yaml must parse, and every
    safetensors file's header must parse and account for exactly the file's size."""
    state = ckpt / STATE_FILE
    if not state.is_file():
        return f"{state} is missing"
    try:
        with zipfile.ZipFile(state) as z:
            if not z.namelist():
                return f"{state} is empty"
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        return f"{state} is truncated or corrupt ({e})"
    cfg = ckpt / "config.json"
    if not cfg.is_file():
        return f"{cfg} is missing"
    try:
        json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"{cfg} is not valid JSON ({e})"
    settings = ckpt / "config.yaml"  # the run's settings, compared on resume
    try:
        if not isinstance(yaml.safe_load(settings.read_text(encoding="utf-8")), (dict, type(None))):
            return f"{settings} is not a mapping"
    except FileNotFoundError:
        return f"{settings} is missing"
    except (OSError, ValueError, yaml.YAMLError) as e:
        return f"{settings} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return weights_damage(ckpt)


def weights_damage(model_dir: Path) -> Optional[str]:
    """What is wrong with the safetensors weights of a model directory (none, a shard its index
    lists is missing, a truncated file), or None."""
    files = sorted(model_dir.glob("*.safetensors"))
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"{index} is not a valid safetensors index ({e})"
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            return f"{model_dir / missing[0]} is missing (listed in {index.name})"
    elif not files:
        return f"{model_dir / 'model.safetensors'} is missing"
    for f in files:
        problem = safetensors_damage(f)
        if problem is not None:
            return problem
    return None


def safetensors_damage(path: Path) -> Optional[str]:
    """What is wrong with a safetensors file, judged from its header and size alone, or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                return f"{path} is truncated ({size} bytes, not even a header)"
            n = int.from_bytes(prefix, "little")
            if n > size - 8:
                return f"{path} is truncated ({size} bytes, shorter than its {n}-byte header)"
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        return f"{path} has an unreadable header ({type(e).__name__}: {e})"
    expected = 8 + n + end
    if size < expected:
        return f"{path} is truncated ({size} of {expected} bytes)"
    if size > expected:
        return f"{path} is corrupt ({size - expected} bytes beyond its last tensor)"
    return None


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state keyed by parameter name, so it loads into any sharding or number
    of processes (gathered from the shards under FSDP: every process must call this)."""
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state written by :func:`optimizer_state` (each process keeps its own shard of it)."""
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def load_state(ckpt: Path) -> dict[str, Any]:
    """Training state of a checkpoint, loaded without executing code."""
    return torch.load(ckpt / STATE_FILE, weights_only=True)


def restore(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """Load a checkpoint's optimizer, scheduler and RNG states (its weights are loaded with the
    model); returns its whole training state for the command's own entries."""
    state = load_state(ckpt)
    load_optimizer_state(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state
