"""Policy-gradient surrogate losses."""

from __future__ import annotations

import torch


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, as a loss: −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A).

    logp, old_logp: [B, T]; advantages: [B] (one per sequence) or [B, T].
    Returns (loss [B, T], clipped [B, T] bool: where the clipped branch was taken).
    ``eps_high > eps_low`` is DAPO's clip-higher.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped
