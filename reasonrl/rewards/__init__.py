"""The reward layer: verifiers score one completion against its sample.

A verifier is ``verifier(completion, sample) -> RewardResult``. A ``None`` score means the
reward could not be computed (the checker failed); it is masked out of the advantage
statistics, never silently scored 0.
"""

from reasonrl.rewards.base import RewardResult, Verifier
from reasonrl.rewards.builtin import VERIFIERS, exact_answer, extract_answer, think_answer_format
from reasonrl.rewards.compose import ScoredBatch, score_batch

__all__ = [
    "VERIFIERS",
    "RewardResult",
    "ScoredBatch",
    "Verifier",
    "exact_answer",
    "extract_answer",
    "score_batch",
    "think_answer_format",
]
