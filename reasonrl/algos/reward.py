"""The Bradley-Terry reward-model loss (with Llama-2's optional margin)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0
) -> torch.Tensor:
    """mean over pairs of −log σ(chosen − rejected − margin).

    chosen, rejected: [B] scores of the preferred and the other response → scalar.
    Computed as softplus(−x), which stays finite where log(sigmoid(x)) underflows.
    """
    return F.softplus(-(chosen - rejected - margin)).mean()
