"""Preference pairs (a prompt, a chosen and a rejected response) for reward models and DPO.

``prompt`` is the text the policy sees, chat template already applied; ``chosen`` and
``rejected`` are the two responses as plain text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one pair; the responses end with EOS (unless truncated)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def _fit(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut the prompt from the left, then the response from the right, to ``max_length``."""
    response = response[:max_length]
    keep = max_length - len(response)
    return (prompt[len(prompt) - keep :] if keep > 0 else []), response


def encode_pairs(
    pairs: Sequence[PreferencePair], tokenizer: Any, max_length: int
) -> tuple[list[EncodedPair], int]:
    """Tokenize pairs to at most ``max_length`` tokens per prompt + response.

    Returns the encoded pairs and how many of them had to be truncated (for the log: a
    truncated pair may have lost what made one response better, so it is never silent).
    """
    eos = tokenizer.eos_token_id
    enc = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = enc(p.prompt for p in pairs)
    chosen = [ids + [eos] for ids in enc(p.chosen for p in pairs)]
    rejected = [ids + [eos] for ids in enc(p.rejected for p in pairs)]
    out, truncated = [], 0
    for p, c, r in zip(prompts, chosen, rejected, strict=True):
        pc, c2 = _fit(p, c, max_length)
        pr, r2 = _fit(p, r, max_length)
        # Both responses share one prompt: keep the shorter cut so the pair stays comparable.
        prompt = pc if len(pc) <= len(pr) else pr
        truncated += len(prompt) < len(p) or len(c2) < len(c) or len(r2) < len(r)
        out.append(EncodedPair(prompt, c2, r2))
    return out, truncated
