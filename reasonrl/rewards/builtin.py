"""Built-in rule verifiers: the exact answer in the <answer> tag, and the R1 format."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from reasonrl.rewards.base import RewardResult, Verifier
from reasonrl.tasks.base import Sample

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FORMAT_RE = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def extract_answer(completion: str) -> str | None:
    """The text of the only <answer>…</answer> pair, stripped; None if there is not exactly one."""
    found = _ANSWER_RE.findall(completion)
    return found[0].strip() if len(found) == 1 else None


def _as_number(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", "").strip())
    except InvalidOperation:
        return None


def exact_answer(completion: str, sample: Sample) -> RewardResult:
    """1 if the answer equals the gold one (as numbers when both parse, else as strings), else 0.

    Only a single <answer> pair counts, so hedging with several answers earns nothing.
    """
    answer = extract_answer(completion)
    if answer is None:
        return RewardResult(0.0, "unparsed")
    gold, got = _as_number(sample.answer), _as_number(answer)
    same = gold == got if gold is not None and got is not None else answer == sample.answer.strip()
    return RewardResult(1.0 if same else 0.0, "ok" if same else "wrong", {"answer": answer})


def think_answer_format(completion: str, sample: Sample) -> RewardResult:
    """1 for exactly ``<think>…</think> <answer>…</answer>`` with each tag once, else 0."""
    counts_ok = all(completion.count(tag) == 1 for tag in _TAGS)
    ok = counts_ok and _FORMAT_RE.match(completion) is not None
    return RewardResult(1.0 if ok else 0.0, "ok" if ok else "wrong")


VERIFIERS: dict[str, Verifier] = {"answer": exact_answer, "format": think_answer_format}
