"""Estimators: unbiased pass@k and 95% confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):
    1 − C(n−c, k) / C(n, k), computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (sound near 0 and 1, unlike ±1.96·se)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The interval always holds p; at 0 or n successes rounding would leave it a hair outside.
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def mean_ci(
    values: Sequence[float], z: float = Z95, clip: bool = True
) -> tuple[float, float, float]:
    """(mean, low, high) with a normal-approximation interval on the mean of per-problem values;
    ``clip`` keeps the interval inside [0, 1] (for rates such as pass@k)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    if not clip:
        return mean, mean - half, mean + half
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def paired_change(
    before: Sequence[float], after: Sequence[float], z: float = Z95
) -> tuple[float, float, float]:
    """(mean, low, high) of ``after - before`` per problem: the change of a mean score between
    two evaluations of the same problems, with the interval of the paired differences (much
    narrower than the two means' intervals where problems differ more than the models do)."""
    if len(before) != len(after):
        raise ValueError(f"paired scores need the same problems ({len(before)} vs {len(after)})")
    return mean_ci([a - b for a, b in zip(after, before, strict=True)], z, clip=False)
