"""The reward layer: verifiers score one completion against its sample.

A verifier is ``verifier(completion, sample) -> RewardResult(score, status, details)``. A
``None`` score means the reward could not be computed (the checker timed out or failed); it is
masked out of the advantage statistics and counted, never silently scored 0.

Built-in verifiers (``get_verifier(name, **options)``, or by name in a recipe's ``rewards``):
``answer``, ``numeric``, ``math``, ``reasoning_gym``, ``format``, ``tag_count``, ``overlong``,
``length``, ``repetition``, ``code``; a recipe can also name ``my_pkg.module:fn``.
"""

from reasonrl.rewards.base import RewardResult, Verifier
from reasonrl.rewards.compose import RewardTerm, ScoredBatch, build_terms, score_batch
from reasonrl.rewards.extract import extract_answer, last_boxed, last_code_block, math_answer
from reasonrl.rewards.fmt import think_answer_format
from reasonrl.rewards.numeric import exact_answer, numeric, parse_number
from reasonrl.rewards.registry import BUILTIN_VERIFIERS, get_verifier

__all__ = [
    "BUILTIN_VERIFIERS",
    "RewardResult",
    "RewardTerm",
    "ScoredBatch",
    "Verifier",
    "build_terms",
    "exact_answer",
    "extract_answer",
    "get_verifier",
    "last_boxed",
    "last_code_block",
    "math_answer",
    "numeric",
    "parse_number",
    "score_batch",
    "think_answer_format",
]
