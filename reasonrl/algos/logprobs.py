"""Per-token log-probabilities and entropies from logits, computed in row chunks.

A full fp32 ``log_softmax`` over ``[B, T, V]`` is the largest tensor of an RL step for a real
vocabulary (128 × 256 × 151,936 × 4 bytes ≈ 20 GB). We only need one entry per token, so each
chunk of rows is upcast, reduced with ``logsumexp`` and released before the next.
"""

from __future__ import annotations

import torch


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, chunk_rows: int = 8
) -> torch.Tensor:
    """log p(target) under ``softmax(logits / temperature)``.

    logits: [B, T, V], targets: [B, T] (int64) → [B, T] in float32 (float64 for float64 logits).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    out = torch.empty(targets.shape, dtype=dtype, device=logits.device)
    for start in range(0, logits.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        scaled = logits[rows].to(dtype) / temperature
        picked = scaled.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1)
        out[rows] = picked - torch.logsumexp(scaled, dim=-1)
    return out


def token_entropy(
    logits: torch.Tensor, temperature: float = 1.0, chunk_rows: int = 8
) -> torch.Tensor:
    """Entropy of each position's next-token distribution. logits: [B, T, V] → [B, T]."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    out = torch.empty(logits.shape[:2], dtype=dtype, device=logits.device)
    for start in range(0, logits.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        logp = torch.log_softmax(logits[rows].to(dtype) / temperature, dim=-1)
        out[rows] = -(logp.exp() * logp).sum(-1)
    return out
