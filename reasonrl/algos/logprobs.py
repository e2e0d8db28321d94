"""Per-token log-probabilities and entropies from logits, computed in chunks of tokens.

A full fp32 ``log_softmax`` over ``[B, T, V]`` is the largest tensor of an RL step for a real
vocabulary (128 × 256 × 151,936 × 4 bytes ≈ 20 GB). We only need one entry per token, so each
chunk of tokens is upcast, reduced with ``logsumexp`` and released before the next. Chunks run
over the tokens of every row together, so one long packed row is cut as finely as many short
padded ones.
"""

from __future__ import annotations

import torch


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 2048,
) -> torch.Tensor:
    """log p(target) under ``softmax(logits / temperature)``.

    logits: [..., V], targets: [...] (int64) → [...] in float32 (float64 for float64 logits).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    out = torch.empty(flat_targets.shape, dtype=dtype, device=logits.device)
    for start in range(0, flat_targets.shape[0], chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        scaled = flat_logits[rows].to(dtype) / temperature
        picked = scaled.gather(-1, flat_targets[rows].unsqueeze(-1)).squeeze(-1)
        out[rows] = picked - torch.logsumexp(scaled, dim=-1)
    return out.view(targets.shape)


def token_entropy(
    logits: torch.Tensor, temperature: float = 1.0, chunk_tokens: int = 2048
) -> torch.Tensor:
    """Entropy of each position's next-token distribution. logits: [..., V] → [...]."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=dtype, device=logits.device)
    for start in range(0, flat.shape[0], chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        logp = torch.log_softmax(flat[rows].to(dtype) / temperature, dim=-1)
        out[rows] = -(logp.exp() * logp).sum(-1)
    return out.view(logits.shape[:-1])
