"""KL(π‖π_ref) estimators from the sampled token's log-probs (Schulman, "Approximating KL").

With r = π_ref/π evaluated at a token sampled from π:
k1 = −log r (unbiased, high variance, can be negative), k2 = ½(log r)² (biased, low variance),
k3 = r − 1 − log r (unbiased, low variance, never negative; GRPO's choice).
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
