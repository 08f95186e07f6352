"""Rollout engines: sample K completions per prompt from the current policy."""

from opo.rollout.base import Engine, Rollout, RolloutBatch
from opo.rollout.hf import HFEngine

__all__ = ["Engine", "HFEngine", "Rollout", "RolloutBatch"]
