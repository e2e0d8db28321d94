"""Rollout engines: prompts in, completions (token ids, masks, sampling log-probs) out."""

from reasonrl.rollout.base import Episode, Rollout, RolloutEngine
from reasonrl.rollout.fast import FastEngine
from reasonrl.rollout.hf import HFEngine

ENGINES = {"hf": HFEngine, "fast": FastEngine}  # by ``rollout.engine``

__all__ = ["ENGINES", "Episode", "FastEngine", "HFEngine", "Rollout", "RolloutEngine"]
