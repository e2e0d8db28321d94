"""Step-by-step reasoning traces for chained + / − problems (the cold-start SFT data).

A trace keeps a running total from left to right, one operation per step:
``<think>57+87=144, 144-70=74</think> <answer>74</answer>``.
"""

from __future__ import annotations

from reasonrl.tasks.base import Sample


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


def solution_text(sample: Sample) -> str:
    """The completion the cold-start SFT teaches for one sample."""
    expression = sample.meta.get("expression")
    if expression is None:
        raise ValueError("traces need samples with an 'expression' in their metadata")
    steps, result = chain_trace(expression)
    return f"<think>{', '.join(steps)}</think> <answer>{result}</answer>"
