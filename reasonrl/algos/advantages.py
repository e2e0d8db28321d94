"""Advantage estimators for groups of completions sharing a prompt."""

from __future__ import annotations

from collections.abc import Callable

import torch


def grpo_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages (GRPO): (r − mean_group) / (std_group + eps).

    rewards: [P, G] (P prompts, G completions each), NaN where the reward could not be computed.
    NaN entries are left out of the group statistics and get advantage 0 (no gradient).
    ``scale``: group (std of the group, unbiased), batch (std of all valid rewards), none.
    Returns [P, G].
    """
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    n = valid.sum(-1, keepdim=True)
    mean = r.sum(-1, keepdim=True) / n.clamp(min=1)
    centred = torch.where(valid, r - mean, torch.zeros_like(r))
    if scale == "group":
        var = (centred**2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)
        centred = centred / (var.sqrt() + eps)
    elif scale == "batch":
        centred = centred / (rewards[valid].std() + eps) if valid.sum() > 1 else centred
    elif scale != "none":
        raise ValueError(f"unknown advantage scale {scale!r}; choose group, batch or none")
    # A group with a single valid reward has nothing to compare against.
    return torch.where(n > 1, centred, torch.zeros_like(centred))


ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {"grpo": grpo_advantages}
