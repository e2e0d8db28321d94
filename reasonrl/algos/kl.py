"""KL(π‖π_ref) estimators from the sampled token's log-probs (Schulman, "Approximating KL").

With r = π_ref/π evaluated at a token sampled from π:
k1 = −log r (unbiased, high variance, can be negative), k2 = ½(log r)² (biased, low variance),
k3 = r − 1 − log r (unbiased, low variance, never negative; GRPO's choice).

The penalty goes in one of two places. In the loss (GRPO): β·KL is added to each token's policy
loss, so its gradient flows through the current log-probs. In the reward (PPO, REINFORCE++, RLOO):
−β·KL of the *sampling* policy is a constant part of each token's reward, fed to the advantage
estimator like any other reward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """logp, ref_logp: [B, T] → [B, T]."""
    return logp - ref_logp


def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """logp, ref_logp: [B, T] → [B, T]."""
    return 0.5 * (ref_logp - logp) ** 2


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """logp, ref_logp: [B, T] → [B, T]."""
    log_r = ref_logp - logp
    return torch.exp(log_r) - log_r - 1


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": k1,
    "k2": k2,
    "k3": k3,
}


def kl_estimate(name: str, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The estimator ``name`` (k1 | k2 | k3) per token. [B, T] → [B, T]."""
    try:
        return KL_ESTIMATORS[name](logp, ref_logp)
    except KeyError:
        raise ValueError(
            f"unknown KL estimator {name!r}; choose from {list(KL_ESTIMATORS)}"
        ) from None


def kl_in_loss(kl: torch.Tensor, beta: float, ratio: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token KL term to add to the policy loss before aggregation: β·kl (·ratio).

    kl: [B, T] from ``kl_estimate`` on the current log-probs (with gradient). ratio: the importance
    ratio π/π_old ([B, T], or [B, 1] for a sequence-level ratio) from ``policy.importance_ratio``:
    the tokens were sampled from π_old, so weighting by it makes the estimate right off-policy.
    TRL 1.16.0 does this by default (``use_bias_correction_kl=True``); the GRPO paper does not
    (ratio=None). On-policy the value is the same, but the gradient differs. → [B, T].
    """
    return beta * kl if ratio is None else beta * kl * ratio


def kl_in_reward(
    outcome: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, beta: float = 0.0
) -> torch.Tensor:
    """Per-token rewards: the outcome on the last valid token, −β·kl on every valid token.

    outcome: [B] (one reward per completion); mask: [B, T]; kl: [B, T] from ``kl_estimate`` on
    the *sampling* policy's log-probs, detached (a reward, not a loss). Rows without a valid token
    get no reward. → [B, T]; its row sums are RLOO's sequence-level penalised rewards.
    """
    valid = mask > 0
    # The last valid token is the one with exactly one valid token at or after it.
    last = valid & (valid.flip(-1).cumsum(-1).flip(-1) == 1)
    rewards = torch.where(last, outcome.unsqueeze(-1), 0.0)
    return rewards if kl is None else rewards - beta * torch.where(valid, kl, 0.0)
