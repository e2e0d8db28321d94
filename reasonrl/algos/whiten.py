"""Masked batch statistics: mean, variance and whitening over the valid tokens only.

Whitening is a statistic of the whole step, so callers apply it once to the step's advantages
before splitting into micro-batches. With several ranks each holding part of the step,
``sum_ranks`` (a tensor's sum over the ranks; the identity with one) makes the statistics the
whole step's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SumRanks = Callable[[torch.Tensor], torch.Tensor]


def local_sum(t: torch.Tensor) -> torch.Tensor:
    """The ``sum_ranks`` of one process: the tensor itself."""
    return t


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1. x, mask: [B, T] → scalar."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population (biased) variance of ``x`` where ``mask`` is 1. x, mask: [B, T] → scalar."""
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, sum_ranks: SumRanks = local_sum
) -> torch.Tensor:
    """(x − mean) / sqrt(max(var, eps)) over the valid tokens of every rank; 0 on masked ones.

    x, mask: [B, T] → [B, T]. Population variance floored at eps, as OpenRLHF's REINFORCE++.
    The statistics are taken in float64 (two passes: mean, then squared deviations), so that
    sums over ranks in another order agree with one process to rounding.
    """
    x64, m64 = x.double(), mask.double()
    n_sum = sum_ranks(torch.stack([m64.sum(), (x64 * m64).sum()]))
    n = n_sum[0].clamp(min=1)
    mean = n_sum[1] / n
    var = sum_ranks((((x64 - mean) ** 2) * m64).sum()) / n
    return ((x64 - mean) * var.clamp(min=eps).rsqrt() * m64).to(x.dtype)
