"""Reasoning traces for chained + / − problems (the cold-start SFT data).

A careful trace keeps a running total from left to right, one operation per step:
``<think>57+87=144, 144-70=74</think> <answer>74</answer>``. A hasty trace estimates instead:
it rounds every term to the nearest ten and answers with the rounded result,
``<think>~60+90-70=80</think> <answer>80</answer>``, which is right only when the rounding
errors cancel. A cold start that mixes both leaves a model that picks one of the two habits at
the first token of its reasoning; RL on checked answers teaches it to pick the careful one.
"""

from __future__ import annotations

from reasonrl.tasks.base import Sample
from reasonrl.tasks.linear import TASK_NAME as LINEAR_FUNCTION
from reasonrl.tasks.linear import linear_function_solution


def chain_trace(expression: str) -> tuple[list[str], int]:
    """Steps of a left-to-right evaluation of ``"a + b - c"`` and the result."""
    parts = expression.split()
    if len(parts) % 2 == 0 or any(op not in "+-" for op in parts[1::2]):
        raise ValueError(f"not a chain of + and - : {expression!r}")
    total = int(parts[0])
    steps = []
    for op, raw in zip(parts[1::2], parts[2::2], strict=True):
        value = int(raw)
        new = total + value if op == "+" else total - value
        steps.append(f"{total}{op}{value}={new}")
        total = new
    return steps, total


def round_to_ten(value: int) -> int:
    """Nearest multiple of ten, halves away from zero (5 → 10, -15 → -20)."""
    sign = -1 if value < 0 else 1
    return sign * ((abs(value) + 5) // 10 * 10)


def estimate_trace(expression: str) -> tuple[str, int]:
    """The hasty step (every term rounded to ten, then summed) and its result."""
    parts = expression.split()
    rounded = [p if i % 2 else str(round_to_ten(int(p))) for i, p in enumerate(parts)]
    _, result = chain_trace(" ".join(rounded))
    return f"~{''.join(rounded)}={result}", result


def solution_text(sample: Sample, estimate: bool = False) -> str:
    """The completion the cold-start SFT teaches for one sample (``estimate``: the hasty one;
    ``linear_function`` problems have only the careful trace; the calculator's trace is
    ``reasonrl.envs.protocol.tool_trace``)."""
    if sample.meta.get("task") == LINEAR_FUNCTION:
        return linear_function_solution(sample)
    expression = sample.meta.get("expression")
    if expression is None:
        raise ValueError("traces need samples with an 'expression' in their metadata")
    if estimate:
        step, result = estimate_trace(expression)
        return f"<think>{step}</think> <answer>{result}</answer>"
    steps, result = chain_trace(expression)
    return f"<think>{', '.join(steps)}</think> <answer>{result}</answer>"
