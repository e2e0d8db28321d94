"""Importance weights that correct for the behaviour policy not being the trainer's.

The engine that sampled a batch recorded its own log-probs (the behaviour policy μ). They differ
from the trainer's π_old on the same weights when the engine is another implementation (vLLM's
kernels, bf16 sampling beside an fp32 trainer) and on older weights when the batch is stale
(``rollout.async_steps``). The PPO ratio is taken to π_old; each token's loss is then weighted
by π_old / μ, bounded by a cap C so that one token the engine found unlikely cannot dominate:

- ``token_truncate``: min(π_old/μ, C) per token (truncated IS, Yao et al. 2025);
- ``token_mask``: π_old/μ per token, 0 where it exceeds C (masked IS: the token is dropped);
- ``sequence_truncate`` / ``sequence_mask``: the same on the sequence's ratio, the product of
  its tokens' ratios, one weight for every token of the row.

The names are TRL's ``vllm_importance_sampling_mode`` values.
"""

from __future__ import annotations

import math

import torch

TIS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def mismatch_weights(
    trainer: torch.Tensor,
    behaviour: torch.Tensor,
    mask: torch.Tensor,
    cap: float,
    mode: str = "token_truncate",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight of each token's loss, and where it was corrected (the ratio exceeded ``cap``:
    truncated to it, or masked to 0). trainer, behaviour: log-probs [B, T]; mask: [B, T], 1 on
    loss tokens (only they count; nothing elsewhere is corrected). No gradient flows."""
    if mode not in TIS_MODES:
        raise ValueError(f"unknown mismatch correction {mode!r}; choose from {list(TIS_MODES)}")
    mask = mask.to(trainer.dtype)
    log_ratio = (trainer.detach() - behaviour.to(trainer.dtype)) * mask
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(trainer)
    over = (log_ratio > math.log(cap)) & mask.bool()
    # clamped before exp: a sequence's summed log-ratio can overflow, and the cap bounds it anyway
    weight = torch.exp(log_ratio.clamp(max=math.log(cap)))
    if mode.endswith("mask"):
        weight = torch.where(over, torch.zeros_like(weight), weight)
    return weight, over
