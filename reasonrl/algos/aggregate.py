"""Reducing a per-token loss to a scalar, invariant to how the step is split into micro-batches.

Each function takes the *step's* totals (tokens or sequences across every micro-batch), so the
sum of the micro-batch losses equals the loss of the whole step computed at once. All share one
signature; ``norm_len`` is used by ``seq_mean_token_sum_norm`` only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def token_mean(
    loss: torch.Tensor,
    mask: torch.Tensor,
    step_tokens: int,
    step_seqs: int,
    norm_len: int | None = None,
) -> torch.Tensor:
    """Every token of the step weighs the same (DAPO). loss, mask: [B, T] → scalar."""
    return (loss * mask).sum() / step_tokens


def seq_mean_token_mean(
    loss: torch.Tensor,
    mask: torch.Tensor,
    step_tokens: int,
    step_seqs: int,
    norm_len: int | None = None,
) -> torch.Tensor:
    """Mean over sequences of each sequence's token mean (the GRPO paper). [B, T] → scalar."""
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / step_seqs


def seq_mean_token_sum_norm(
    loss: torch.Tensor,
    mask: torch.Tensor,
    step_tokens: int,
    step_seqs: int,
    norm_len: int | None = None,
) -> torch.Tensor:
    """Dr.GRPO: each sequence's token *sum* divided by a constant ``norm_len`` (the generation
    budget, max_new_tokens), mean over sequences. [B, T] → scalar.

    A constant divisor removes the length bias of a per-sequence mean. It must be given: the
    padded width of a micro-batch varies with its longest completion, so defaulting to it would
    make the loss depend on how the step is split.
    """
    if norm_len is None:
        raise ValueError("seq_mean_token_sum_norm needs norm_len (e.g. rollout.max_new_tokens)")
    return (loss * mask).sum() / (norm_len * step_seqs)


AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm,
}


def aggregate(
    name: str,
    loss: torch.Tensor,
    mask: torch.Tensor,
    step_tokens: int,
    step_seqs: int,
    norm_len: int | None = None,
) -> torch.Tensor:
    """Apply the aggregation ``name`` (see AGGREGATIONS). loss, mask: [B, T] → scalar."""
    try:
        fn = AGGREGATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown loss aggregation {name!r}; choose from {list(AGGREGATIONS)}"
        ) from None
    return fn(loss, mask, step_tokens, step_seqs, norm_len)
