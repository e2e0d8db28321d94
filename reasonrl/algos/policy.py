"""Policy-gradient surrogate losses: PPO's clipped objective and its variants.

Variants, all options of ``clipped_surrogate``: clip-higher (``eps_high > eps_low``, DAPO),
dual-clip (a bound c·|A| on the loss of negative-advantage tokens, Ye et al. 2019), a clamp on the
log-ratio before ``exp`` (keeps a stale or mismatched token from overflowing), and the importance
ratio's level, picked by name from IMPORTANCE_RATIOS: per token (PPO, GRPO), per sequence (GSPO:
the length-normalised sequence log-ratio), or GSPO-token (the sequence ratio's value, with a
per-token gradient so that token-level advantages can be used).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def token_log_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """log π/π_old per token. logp, old_logp: [B, T] → [B, T] (mask unused)."""
    return logp - old_logp


def sequence_log_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """GSPO: the mean over valid tokens of log π/π_old, i.e. log of the length-normalised
    sequence ratio (π(y)/π_old(y))^(1/|y|). logp, old_logp, mask: [B, T] → [B, 1]."""
    if mask is None:
        raise ValueError("a sequence-level importance ratio needs the completion mask")
    total = ((logp - old_logp) * mask).sum(-1, keepdim=True)
    return total / mask.sum(-1, keepdim=True).clamp(min=1)


def sequence_token_log_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """GSPO-token: sg[sequence log-ratio] + logp − sg[logp]. Its value is the sequence's at every
    token; its gradient at token t is that of token t alone. [B, T] → [B, T]."""
    seq = sequence_log_ratio(logp, old_logp, mask).detach()
    return seq + logp - logp.detach()


IMPORTANCE_RATIOS: dict[
    str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
] = {
    "token": token_log_ratio,
    "sequence": sequence_log_ratio,
    "sequence_token": sequence_token_log_ratio,
}


def importance_ratio(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor | None = None,
    level: str = "token",
    log_ratio_clamp: float | None = None,
) -> torch.Tensor:
    """π/π_old at ``level`` (see IMPORTANCE_RATIOS), the log-ratio clamped to ±log_ratio_clamp
    before ``exp`` when given. logp, old_logp, mask: [B, T] → [B, T] ([B, 1] for "sequence")."""
    if level not in IMPORTANCE_RATIOS:
        raise ValueError(
            f"unknown importance ratio level {level!r}; choose from {list(IMPORTANCE_RATIOS)}"
        )
    log_ratio = IMPORTANCE_RATIOS[level](logp, old_logp, mask)
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    return torch.exp(log_ratio)


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    *,
    mask: torch.Tensor | None = None,
    ratio_level: str = "token",
    dual_clip: float | None = None,
    log_ratio_clamp: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, as a loss: −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A).

    logp, old_logp: [B, T]; advantages: [B] (one per sequence) or [B, T]; mask: [B, T], needed
    for the sequence-level ratios. ``ratio_level``: token | sequence (GSPO) | sequence_token.
    ``dual_clip`` c > 1: where A < 0 the loss is capped at c·|A|, so a token whose ratio has
    grown huge cannot dominate the step. ``log_ratio_clamp``: see ``importance_ratio``.
    Returns (loss [B, T], clipped [B, T] bool: where the loss has no gradient through the ratio,
    i.e. the clipped branch or the dual-clip bound was taken).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = importance_ratio(logp, old_logp, mask, ratio_level, log_ratio_clamp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    no_grad = clipped < unclipped
    if dual_clip is not None:
        if dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        bound = -dual_clip * advantages
        capped = (advantages < 0) & (loss > bound)
        loss = torch.where(capped, bound, loss)
        no_grad = no_grad | capped
    return loss.expand_as(logp), no_grad.expand_as(logp)


def entropy_bonus(entropy: torch.Tensor, coef: float) -> torch.Tensor:
    """−coef·H per token, added to the per-token loss *before* aggregation so that the bonus is
    normalised like the policy loss (invariant to gradient accumulation; TRL instead takes a
    micro-batch token mean). entropy: [B, T] → [B, T]."""
    return -coef * entropy
