"""Masked batch statistics: mean, variance and whitening over the valid tokens only.

Whitening is a statistic of the whole step, so callers apply it once to the step's advantages
before splitting into micro-batches (with several ranks: to the gathered advantages).
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1. x, mask: [B, T] → scalar."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population (biased) variance of ``x`` where ``mask`` is 1. x, mask: [B, T] → scalar."""
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / sqrt(max(var, eps)) over the valid tokens; 0 on masked ones.

    x, mask: [B, T] → [B, T]. Population variance floored at eps, as OpenRLHF's REINFORCE++.
    """
    whitened = (x - masked_mean(x, mask)) * masked_var(x, mask).clamp(min=eps).rsqrt()
    return whitened * mask
