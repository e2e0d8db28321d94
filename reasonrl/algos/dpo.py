"""Direct preference optimisation: DPO's logistic loss and IPO's squared loss on log-ratios.

With Δ_c = log π(chosen) − log π_ref(chosen) and Δ_r the same for the rejected response (sums
over the response's tokens), the implicit rewards are β·Δ_c and β·Δ_r and

- ``sigmoid`` (DPO, arXiv 2305.18290): −log σ(β·(Δ_c − Δ_r));
- ``ipo`` (IPO, arXiv 2310.12036 eq. 17): (Δ_c/n_c − Δ_r/n_r − 1/(2β))², each log-ratio
  averaged over its response's n tokens, as TRL 1.16.0's DPOTrainer does (its comment: the
  IPO authors' results use this normalised form).

Losses are per pair; the trainer sums them and divides by the pairs of the whole optimizer step,
so the step's loss does not depend on how it is split into micro-batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair loss and implicit rewards from sequence log-probs (sums over response tokens).

    All inputs: [B]. ``chosen_tokens``/``rejected_tokens`` [B]: response lengths, needed by
    ``ipo``. Returns (loss [B], chosen_rewards [B], rejected_rewards [B]); the rewards,
    β·(log π − log π_ref), are detached.
    """
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("loss_type='ipo' averages over tokens: pass chosen/rejected_tokens")
        delta = chosen_logratio / chosen_tokens.clamp(min=1) - rejected_logratio / (
            rejected_tokens.clamp(min=1)
        )
        loss = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose from {DPO_LOSS_TYPES}")
    return loss, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()
