"""Token-level advantages from per-token rewards: GAE (with a critic) and REINFORCE++.

Per-token rewards come from ``kl.kl_in_reward`` (outcome on the last completion token, −β·KL on
every token). Masked positions (padding, or tokens the policy did not choose such as tool output)
are skipped: the recursion links each valid token to the next valid token of its row, and the
episode ends after the last valid one.
"""

from __future__ import annotations

import torch

from reasonrl.algos.whiten import SumRanks, local_sum, masked_whiten


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation: A_t = δ_t + γλ·A_next, δ_t = r_t + γ·V_next − V_t.

    rewards, values (critic's V before each token), mask: [B, T] →
    (advantages [B, T], returns = advantages + values [B, T]), both 0 on masked positions.
    Vectorised over the batch, a scan over time.
    """
    valid = mask > 0
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        m = valid[:, t]
        advantages[:, t] = torch.where(m, adv, torch.zeros_like(adv))
        next_value = torch.where(m, values[:, t], next_value)
        next_adv = torch.where(m, adv, next_adv)
    return advantages, (advantages + values) * mask


def reinforce_pp_advantages(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    eps: float = 1e-8,
    sum_ranks: SumRanks = local_sum,
) -> torch.Tensor:
    """REINFORCE++: per-token returns-to-go G_t = Σ_{s≥t} γ^{s−t} r_s, whitened over every valid
    token of the batch (global normalisation, no per-prompt baseline).

    token_rewards: [B, T], with the KL penalty already folded in (``kl.kl_in_reward``);
    mask: [B, T] → advantages [B, T], 0 on masked positions.
    """
    # Returns-to-go are GAE with a zero critic and λ = 1.
    returns, _ = gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma, 1.0)
    return masked_whiten(returns, mask, eps, sum_ranks)
