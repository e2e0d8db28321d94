"""The record every task source produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One problem: the question as posed, its gold answer, and source metadata."""

    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
