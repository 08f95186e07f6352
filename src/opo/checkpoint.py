"""Atomic checkpoints: model (HF safetensors), optimizer, scheduler, RNG states, data position, config.

A checkpoint is written into a temporary directory, every file is fsynced, and the directory is
renamed to ``step_NNNNNNN``: a directory with that name is always complete. Training state loads
with ``weights_only=True``, so reading a checkpoint never executes code.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

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
) -> Path:
    """Write checkpoint ``step`` atomically under ``ckpt_root`` and prune to the last ``keep``;
    ``weights``: the model's full state dict where its own is sharded."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    remove_partial(ckpt_root)
    final = ckpt_root / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:07d}.", dir=ckpt_root))
    try:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / STATE_FILE)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_tree(ckpt_root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in complete_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial(ckpt_root: Path) -> None:
    """Delete the temporary directories of saves that were killed (up to 1.6 GB each for the
    embedded model); only the run holding the run directory's lock writes here."""
    if ckpt_root.is_dir():
        for p in ckpt_root.glob(".step_*"):
            shutil.rmtree(p, ignore_errors=True)


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first (temporary ones are ignored)."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest(ckpt_root: Path) -> Optional[Path]:
    found = complete_checkpoints(ckpt_root)
    return found[-1] if found else None


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
