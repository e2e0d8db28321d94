"""Combining several verifiers into one reward per completion, by weight."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reasonrl.config import ConfigError
from reasonrl.rewards.base import RewardResult
from reasonrl.rewards.builtin import VERIFIERS
from reasonrl.tasks.base import Sample


@dataclass(frozen=True)
class ScoredBatch:
    """total: weighted sum per completion (NaN if a component is missing);
    components: each verifier's scores (NaN where None); results: the raw RewardResults."""

    total: list[float]
    components: dict[str, list[float]]
    results: dict[str, list[RewardResult]]


def score_batch(
    completions: Sequence[str], samples: Sequence[Sample], weights: Mapping[str, float]
) -> ScoredBatch:
    """Score every completion with every weighted verifier and sum by weight."""
    unknown = [name for name in weights if name not in VERIFIERS]
    if unknown:
        raise ConfigError(f"unknown reward {unknown[0]!r}; built-in rewards: {list(VERIFIERS)}")
    results = {
        name: [VERIFIERS[name](c, s) for c, s in zip(completions, samples, strict=True)]
        for name in weights
    }
    components = {
        name: [math.nan if r.score is None else r.score for r in rs] for name, rs in results.items()
    }
    total = [
        sum(weights[name] * components[name][i] for name in weights)
        for i in range(len(completions))
    ]
    return ScoredBatch(total, components, results)
