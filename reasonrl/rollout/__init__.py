"""Rollout engines: prompts in, completions (token ids, masks, sampling log-probs) out."""

from typing import Any

import torch

from reasonrl.config import RolloutConfig
from reasonrl.rollout.base import Episode, Rollout, RolloutEngine
from reasonrl.rollout.fast import FastEngine
from reasonrl.rollout.hf import HFEngine

ENGINES = {"hf": HFEngine, "fast": FastEngine}  # by ``rollout.engine``; vllm: make_engine


def make_engine(
    cfg: RolloutConfig, model: torch.nn.Module, tokenizer: Any, batch_completions: int
) -> RolloutEngine:
    """The engine ``rollout.engine`` names, generating with ``model``'s weights. vLLM is
    imported only here: it is an extra, and slow to import."""
    if cfg.engine == "vllm" and cfg.vllm.url is not None:
        from reasonrl.rollout.vllm_server import VLLMServerEngine

        return VLLMServerEngine(model, tokenizer, cfg.vllm)
    if cfg.engine == "vllm":
        from reasonrl.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model, tokenizer, cfg.vllm)
    return ENGINES[cfg.engine](model, tokenizer, batch_completions)


__all__ = [
    "ENGINES",
    "Episode",
    "FastEngine",
    "HFEngine",
    "Rollout",
    "RolloutEngine",
    "make_engine",
]
