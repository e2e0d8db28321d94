"""Advantage estimators for groups of completions sharing a prompt (one outcome reward each).

Every function maps rewards [P, G] (P prompts, G completions each, NaN where the reward could
not be computed) to advantages [P, G]. NaN entries are left out of the group statistics and get
advantage 0, and so does every member of a group with fewer than two valid rewards: there is
nothing to compare it against. Token-level estimators (GAE, REINFORCE++) live in ``returns.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def grpo_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages (GRPO): (r − mean_group) / (std_group + eps).

    rewards: [P, G] → [P, G]. ``scale``: group (std of the group, unbiased), batch (unbiased std
    of all valid rewards; still centred on the group mean), none (Dr.GRPO). eps 1e-4 is TRL's.
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
    return torch.where(n > 1, centred, torch.zeros_like(centred))


def dr_grpo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO: r − mean_group, without GRPO's division by the group std.

    Dividing by the std up-weights prompts whose rewards barely differ (too easy or too hard);
    Dr.GRPO drops it. rewards: [P, G] → [P, G].
    """
    return grpo_advantages(rewards, scale="none")


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out: r_i minus the mean of the *other* valid rewards of its group.

    Equals n/(n−1)·(r_i − mean_group) for n valid rewards: an unbiased baseline, since it does
    not depend on the sample it is subtracted from. rewards: [P, G] → [P, G].
    """
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    n = valid.sum(-1, keepdim=True)
    others = (r.sum(-1, keepdim=True) - r) / (n - 1).clamp(min=1)
    return torch.where(valid & (n > 1), r - others, torch.zeros_like(r))


ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
}
