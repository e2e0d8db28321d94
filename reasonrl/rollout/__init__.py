"""Rollout engines: prompts in, completions (token ids, masks, sampling log-probs) out."""

from reasonrl.rollout.base import Rollout, RolloutEngine
from reasonrl.rollout.fast import FastEngine
from reasonrl.rollout.hf import HFEngine

ENGINES = {"hf": HFEngine, "fast": FastEngine}  # by ``rollout.engine``

__all__ = ["ENGINES", "FastEngine", "HFEngine", "Rollout", "RolloutEngine"]
