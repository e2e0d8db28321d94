"""``linear_function``: a small code task that the bundled model can learn beside its arithmetic.

The problem gives two values of a linear function and asks for the function in Python::

    Write a Python function f(x) with f(0) = 7 and f(1) = 19.

The slope is f(1) − f(0), one subtraction; the careful trace works it out and writes the
function on one line: ``<think>19-7=12</think> <answer>def f(x): return 12*x+7</answer>``. The
answer is checked by running it in the sandbox against asserts at other points
(``meta["tests"]``, the ``code`` verifier's test spec, with ``meta["extract"] = "answer"``: the
program is the <answer> text), so any correct program passes, not only the canonical one.
"""

from __future__ import annotations

import random

from reasonrl.config import ConfigError
from reasonrl.tasks.base import Sample

TASK_NAME = "linear_function"
DEFAULTS = {"min_slope": -20, "max_slope": 20, "min_intercept": 0, "max_intercept": 60}
_TEST_POINTS = (0, 1, 2, 5, -3, 10)


def _program(slope: int, intercept: int) -> str:
    return f"def f(x): return {slope}*x+{intercept}"


def linear_function_samples(size: int, seed: int, params: dict[str, int]) -> list[Sample]:
    """``size`` distinct problems (fewer if the ranges hold fewer), drawn by ``seed``;
    ``params`` overrides :data:`DEFAULTS` (inclusive integer ranges; slope 0 is never drawn)."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        valid = list(DEFAULTS)
        raise ConfigError(f"{TASK_NAME}: unknown params {sorted(unknown)} (valid: {valid})")
    p = {**DEFAULTS, **params}
    slopes = [a for a in range(p["min_slope"], p["max_slope"] + 1) if a != 0]
    intercepts = range(p["min_intercept"], p["max_intercept"] + 1)
    pairs = [(a, b) for a in slopes for b in intercepts]
    if not pairs:
        raise ConfigError(f"{TASK_NAME}: empty ranges {p}")
    rng = random.Random(seed)
    chosen = rng.sample(pairs, min(size, len(pairs)))
    samples = []
    for slope, intercept in chosen:
        f0, f1 = intercept, slope + intercept
        tests = "".join(f"assert f({x}) == {slope * x + intercept}\n" for x in _TEST_POINTS)
        meta = {
            "task": TASK_NAME,
            "f0": f0,
            "f1": f1,
            "tests": {"kind": "asserts", "test_code": tests},
            "extract": "answer",
        }
        prompt = f"Write a Python function f(x) with f(0) = {f0} and f(1) = {f1}."
        samples.append(Sample(prompt, _program(slope, intercept), meta))
    return samples


def linear_function_solution(sample: Sample) -> str:
    """The careful trace for a ``linear_function`` sample: the slope, then the function."""
    f0, f1 = sample.meta["f0"], sample.meta["f1"]
    return f"<think>{f1}-{f0}={f1 - f0}</think> <answer>{_program(f1 - f0, f0)}</answer>"
