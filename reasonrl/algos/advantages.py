"""Advantage estimators, one registry with one signature: ``ADVANTAGES[name](AdvantageInput)``
→ (advantages [B, C], returns [B, C] | None). ``algo.advantage`` names a key, or a user's
estimator by import path (``my_pkg.module:fn``), resolved by :func:`get_advantage`.

The group functions map rewards [P, G] (P prompts, G completions each, NaN where the reward
could not be computed) to advantages [P, G]. NaN entries are left out of the group statistics
and get advantage 0, and so does every member of a group with fewer than two valid rewards:
there is nothing to compare it against. The token-level maths (GAE, REINFORCE++) lives in
``returns.py``; the registry entries below wrap both kinds into the one signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from reasonrl.algos.returns import gae, reinforce_pp_advantages
from reasonrl.algos.whiten import SumRanks, local_sum, masked_whiten
from reasonrl.config import resolve_callable


def grpo_advantages(
    rewards: torch.Tensor,
    scale: str = "group",
    eps: float = 1e-4,
    sum_ranks: SumRanks = local_sum,
) -> torch.Tensor:
    """Group-normalised advantages (GRPO): (r − mean_group) / (std_group + eps).

    rewards: [P, G] → [P, G]. ``scale``: group (std of the group, unbiased), batch (unbiased std
    of all valid rewards; still centred on the group mean), none (Dr.GRPO). eps 1e-4 is TRL's.
    ``sum_ranks``: with several ranks, a tensor's sum over them, so that ``batch`` is the std of
    every rank's rewards (groups are whole on one rank: the group statistics need nothing).
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
        centred = centred / (_batch_std(r, valid, sum_ranks) + eps)
    elif scale != "none":
        raise ValueError(f"unknown advantage scale {scale!r}; choose group, batch or none")
    return torch.where(n > 1, centred, torch.zeros_like(centred))


def _batch_std(r: torch.Tensor, valid: torch.Tensor, sum_ranks: SumRanks) -> torch.Tensor:
    """Unbiased std of the valid rewards of every rank (two float64 passes); 0 below two."""
    v, r64 = valid.double(), r.double()
    n_sum = sum_ranks(torch.stack([v.sum(), r64.sum()]))
    mean = n_sum[1] / n_sum[0].clamp(min=1)
    sq = sum_ranks((((r64 - mean) ** 2) * v).sum())
    return (
        (sq / (n_sum[0] - 1)).sqrt().to(r.dtype) if n_sum[0] > 1 else torch.zeros((), dtype=r.dtype)
    )


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


@dataclass(frozen=True)
class AdvantageInput:
    """What every registered estimator reads. B = P·G completions, C completion tokens.

    rewards: [P, G] sequence rewards (NaN = uncomputed), minus β·Σ KL over the row's ``mask``
    tokens when the KL penalty is a reward. token_rewards: [B, C], the outcome on the last
    ``mask`` token (0 where uncomputed) and −β·KL on every one (``kl.kl_in_reward``). mask: [B, C]
    completion tokens that may carry loss. values: [B, C] the critic's V before each token, or
    None without one. ``sum_ranks``: a tensor's sum over the training ranks (the identity in one
    process): with several ranks every input above holds this rank's prompts only (whole
    groups), and an estimator taking a statistic of the whole batch (a std, a whitening) sums
    its parts with it, as ``grpo_advantages`` and ``masked_whiten`` do. The rest are the
    ``algo`` fields of the same names.
    """

    rewards: torch.Tensor
    token_rewards: torch.Tensor
    mask: torch.Tensor
    values: torch.Tensor | None
    scale_rewards: str = "group"
    std_eps: float | None = None
    whiten: bool = False
    gamma: float | None = None
    lam: float | None = None
    sum_ranks: SumRanks = local_sum

    def computed_mask(self) -> torch.Tensor:
        """``mask`` without the completions whose reward could not be computed: [B, C]."""
        computed = ~torch.isnan(self.rewards.flatten()).to(self.mask.device)
        return self.mask * computed.unsqueeze(-1)


# An estimator: (advantages [B, C], returns [B, C] | None). NaN advantages mark tokens that must
# carry no loss (token-level estimators have no reward to give an uncomputed completion);
# returns are the critic's targets, None for critic-free estimators.
Estimator = Callable[[AdvantageInput], tuple[torch.Tensor, torch.Tensor | None]]


def _per_token(x: AdvantageInput, adv: torch.Tensor) -> tuple[torch.Tensor, None]:
    """One advantage per completion [P, G] given to each of its ``mask`` tokens → [B, C]
    (whitened over those tokens with ``whiten``)."""
    b, c = x.mask.shape
    adv = adv.to(x.mask.device).reshape(b, 1).expand(b, c)
    if x.whiten:
        adv = masked_whiten(adv, x.mask, x.std_eps or 1e-8, x.sum_ranks)
    return adv * x.mask, None


def _uncomputed_to_nan(x: AdvantageInput, adv: torch.Tensor) -> torch.Tensor:
    computed = ~torch.isnan(x.rewards.flatten()).to(adv.device)
    return torch.where(computed.unsqueeze(-1), adv, torch.nan)


def grpo(x: AdvantageInput) -> tuple[torch.Tensor, None]:
    """``grpo_advantages`` with ``scale_rewards`` and ``std_eps``, on every token."""
    return _per_token(x, grpo_advantages(x.rewards, x.scale_rewards, x.std_eps, x.sum_ranks))


def dr_grpo(x: AdvantageInput) -> tuple[torch.Tensor, None]:
    """``dr_grpo_advantages`` on every token."""
    return _per_token(x, dr_grpo_advantages(x.rewards))


def rloo(x: AdvantageInput) -> tuple[torch.Tensor, None]:
    """``rloo_advantages`` on every token."""
    return _per_token(x, rloo_advantages(x.rewards))


def reinforce_pp(x: AdvantageInput) -> tuple[torch.Tensor, None]:
    """``returns.reinforce_pp_advantages`` of the token rewards (whitening is part of it)."""
    mask = x.computed_mask()
    adv = reinforce_pp_advantages(x.token_rewards, mask, x.gamma or 1.0, x.std_eps, x.sum_ranks)
    return _uncomputed_to_nan(x, adv * mask), None


def gae_advantages(x: AdvantageInput) -> tuple[torch.Tensor, torch.Tensor]:
    """``returns.gae`` of the token rewards and the critic's values (whitened with ``whiten``);
    its returns are the critic's targets."""
    if x.values is None:
        raise ValueError("the gae advantage needs a critic's values (algo.name=ppo)")
    mask = x.computed_mask()
    adv, returns = gae(x.token_rewards, x.values, mask, x.gamma or 1.0, x.lam or 1.0)
    if x.whiten:
        adv = masked_whiten(adv, mask, x.std_eps or 1e-8, x.sum_ranks)
    return _uncomputed_to_nan(x, adv * mask), returns


ADVANTAGES: dict[str, Estimator] = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "reinforce_pp": reinforce_pp,
    "gae": gae_advantages,
}


def get_advantage(name: str) -> Estimator:
    """The estimator ``name``: a key of ``ADVANTAGES``, or a user's ``my_pkg.module:fn`` taking
    an :class:`AdvantageInput`. Raises :class:`ConfigError` saying what is wrong."""
    return resolve_callable(name, ADVANTAGES, "advantage", "my_pkg.advantages:fn")
