"""The supervised fine-tuning loss: negative log-likelihood of completion tokens only."""

from __future__ import annotations

import torch


def sft_loss(
    logp: torch.Tensor, mask: torch.Tensor, num_tokens: int | torch.Tensor
) -> torch.Tensor:
    """−Σ logp·mask / num_tokens.

    logp: [B, T] log-probs of the target tokens; mask: [B, T], 1 on completion tokens;
    ``num_tokens`` is the count of completion tokens in the *whole optimizer step*, so summing
    this over micro-batches gives the step's token mean however the step is split.
    """
    return -(logp * mask).sum() / num_tokens
