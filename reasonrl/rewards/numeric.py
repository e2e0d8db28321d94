"""Exact answers: ``numeric`` (decimal equality) and ``answer`` (numbers, else exact strings).

Both read the single <answer> tag; no substring or partial credit, so "5 or 6" earns nothing
for 5, and thousands separators must be well placed ("1,234" is 1234, "1,2" is not a number).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from reasonrl.rewards.base import RewardResult
from reasonrl.rewards.extract import extract_answer
from reasonrl.tasks.base import Sample

_NUMBER_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d*)?(?:[eE][+-]?\d+)?")


def parse_number(text: str) -> Decimal | None:
    """``"-1,234.50"`` → ``Decimal("-1234.50")``; None for anything that is not one finite
    decimal number (words, several numbers, misplaced commas, NaN, infinity)."""
    text = text.strip()
    if not re.search(r"\d", text) or not _NUMBER_RE.fullmatch(text):
        return None
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def numeric(completion: str, sample: Sample) -> RewardResult:
    """1 if the <answer> is the same decimal number as the gold answer (``74`` = ``74.0`` =
    ``+74``), else 0; ``unparsed`` (0) without a single numeric answer; ``error`` (None) when
    the gold answer itself is not a number."""
    gold = parse_number(sample.answer)
    if gold is None:
        return RewardResult(None, "error", {"reason": f"gold {sample.answer!r} is not a number"})
    answer = extract_answer(completion)
    got = None if answer is None else parse_number(answer)
    if got is None:
        return RewardResult(0.0, "unparsed", {"answer": answer})
    same = got == gold
    return RewardResult(1.0 if same else 0.0, "ok" if same else "wrong", {"answer": answer})


def exact_answer(completion: str, sample: Sample) -> RewardResult:
    """1 if the <answer> equals the gold one (as numbers when both parse, else as stripped
    strings), else 0. Only a single <answer> pair counts, so hedging with several earns nothing."""
    answer = extract_answer(completion)
    if answer is None:
        return RewardResult(0.0, "unparsed")
    gold, got = parse_number(sample.answer), parse_number(answer)
    same = gold == got if gold is not None and got is not None else answer == sample.answer.strip()
    return RewardResult(1.0 if same else 0.0, "ok" if same else "wrong", {"answer": answer})
