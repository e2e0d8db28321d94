"""Rollout engines: prompts in, completions (token ids, masks, sampling log-probs) out."""

from reasonrl.rollout.base import Rollout, RolloutEngine
from reasonrl.rollout.hf import HFEngine

__all__ = ["HFEngine", "Rollout", "RolloutEngine"]
