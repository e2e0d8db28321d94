"""The record every task source produces, and the ``\\boxed{}`` reading that gold answers
(datasets whose solutions box them) and completions (the math verifier) share."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


@dataclass(frozen=True)
class Sample:
    """One problem: the question as posed, its gold answer, and source metadata."""

    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """The group the problem is reported in: its task of a mix (``meta["task"]``), and its
        difficulty label where it has one (``task.difficulty``): ``chain_sum/hard``."""
        task, difficulty = self.meta.get("task", ""), self.meta.get("difficulty")
        if not isinstance(difficulty, str):  # reasoning-gym's own ranges under the same key
            return task
        return f"{task}/{difficulty}" if task else difficulty


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) with balanced braces; None if
    there is none or it is never closed."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip()
    return None
