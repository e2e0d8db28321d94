"""The critic's loss (PPO): squared error to the returns, with PPO's value clipping."""

from __future__ import annotations

import torch


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_eps: float | None = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """½·max((V − R)², (V_clip − R)²) per token, V_clip = V_old + clip(V − V_old, −ε, ε).

    The max makes clipping pessimistic: a value may not move more than ε from the one that
    produced the advantages unless that lowers the error. The ½ makes the gradient (V − R), as
    in OpenRLHF and verl. ``clip_eps=None``: plain ½(V − R)².
    values, old_values, returns: [B, T] → (loss [B, T], clipped [B, T] bool: where the clipped
    error was the larger). Aggregate with ``aggregate`` like the policy loss.
    """
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    clipped_values = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), clipped > unclipped
