"""The verifier contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from reasonrl.tasks.base import Sample

Status = Literal["ok", "wrong", "unparsed", "timeout", "error", "skipped"]


@dataclass(frozen=True)
class RewardResult:
    """score: the reward, or None when it could not be computed (the checker timed out or
    failed: status ``timeout`` or ``error``) or was not asked for (``skipped``: the term does
    not score this sample's task); status says why; details are for the logs."""

    score: float | None
    status: Status
    details: dict[str, Any] = field(default_factory=dict)


class Verifier(Protocol):
    """``verifier(completion, sample) -> RewardResult``.

    Optional extras that :func:`reasonrl.rewards.score_batch` uses when present: keyword
    arguments ``n_tokens`` (the completion's length in tokens) and ``episode`` (a multi-turn
    completion's :class:`reasonrl.rollout.Episode`: its turns, tool calls and errors; None for
    a single turn), and a method ``batch(completions, samples) -> list[RewardResult]`` that
    scores many at once (used when neither keyword is taken).
    """

    def __call__(self, completion: str, sample: Sample) -> RewardResult: ...
