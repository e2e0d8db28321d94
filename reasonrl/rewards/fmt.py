"""Shape rewards: the R1 format, tag counting, and length/repetition penalties (never positive).

``prefilled_think``: the chat template already ends the prompt with ``<think>`` (as QwQ's and
DeepSeek-R1's do), so the completion starts inside the thinking and must not open it again.

Length penalties count tokens (``unit="tokens"``, the ``n_tokens`` that ``score_batch`` passes
when given the completion lengths) or characters (``unit="chars"``).
"""

from __future__ import annotations

import re
from typing import Literal

from reasonrl.rewards.base import RewardResult
from reasonrl.tasks.base import Sample

_FORMAT_RE = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
_PREFILLED_RE = re.compile(r"^(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _tags(prefilled_think: bool) -> tuple[str, ...]:
    return _TAGS[1:] if prefilled_think else _TAGS


def think_answer_format(
    completion: str, sample: Sample, *, prefilled_think: bool = False
) -> RewardResult:
    """1 for exactly ``<think>…</think> <answer>…</answer>`` (``…</think> <answer>…</answer>``
    when ``prefilled_think``) with each tag once and nothing around it, else 0."""
    pattern = _PREFILLED_RE if prefilled_think else _FORMAT_RE
    ok = all(completion.count(tag) == 1 for tag in _tags(prefilled_think))
    if prefilled_think:
        ok = ok and "<think>" not in completion
    ok = ok and pattern.match(completion) is not None
    return RewardResult(1.0 if ok else 0.0, "ok" if ok else "wrong")


def tag_count(completion: str, sample: Sample, *, prefilled_think: bool = False) -> RewardResult:
    """Partial format credit: an equal share of 1 for each tag that appears exactly once
    (a repeated tag earns nothing, so spamming tags does not pay)."""
    tags = _tags(prefilled_think)
    score = sum(completion.count(tag) == 1 for tag in tags) / len(tags)
    return RewardResult(score, "ok" if score == 1.0 else "wrong", {"tags": score * len(tags)})


def _length(completion: str, unit: str, n_tokens: int | None) -> int | None:
    return len(completion) if unit == "chars" else n_tokens


_NO_TOKENS = RewardResult(
    None, "error", {"reason": "unit=tokens needs n_tokens: pass lengths to score_batch"}
)


def overlong(
    completion: str,
    sample: Sample,
    *,
    max_length: int,
    buffer: int,
    unit: Literal["tokens", "chars"] = "tokens",
    n_tokens: int | None = None,
) -> RewardResult:
    """DAPO's soft overlong punishment: 0 up to ``max_length - buffer``, then falling linearly
    to -1 at ``max_length``, and -1 beyond."""
    n = _length(completion, unit, n_tokens)
    if n is None:
        return _NO_TOKENS
    free = max_length - buffer
    score = 0.0 if n <= free else max(-1.0, (free - n) / buffer)
    return RewardResult(score, "ok", {"length": n})


def length_penalty(
    completion: str,
    sample: Sample,
    *,
    max_length: int,
    unit: Literal["tokens", "chars"] = "tokens",
    n_tokens: int | None = None,
) -> RewardResult:
    """A cost per unit of length: ``-n / max_length``, at least -1."""
    n = _length(completion, unit, n_tokens)
    if n is None:
        return _NO_TOKENS
    return RewardResult(max(-1.0, -n / max_length), "ok", {"length": n})


def repetition(
    completion: str, sample: Sample, *, ngram: int = 3, max_penalty: float = 1.0
) -> RewardResult:
    """``-max_penalty × (1 - distinct word n-grams / all word n-grams)``: 0 for text without
    repeated n-grams, approaching ``-max_penalty`` for text that loops."""
    words = completion.split()
    grams = [tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
    if not grams:
        return RewardResult(0.0, "ok")
    repeated = 1.0 - len(set(grams)) / len(grams)
    return RewardResult(-max_penalty * repeated, "ok", {"repeated": repeated})
