"""The verifier contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from reasonrl.tasks.base import Sample

Status = Literal["ok", "wrong", "unparsed", "timeout", "error"]


@dataclass(frozen=True)
class RewardResult:
    """score: the reward, or None when it could not be computed; status says why."""

    score: float | None
    status: Status
    details: dict[str, Any] = field(default_factory=dict)


class Verifier(Protocol):
    def __call__(self, completion: str, sample: Sample) -> RewardResult: ...
