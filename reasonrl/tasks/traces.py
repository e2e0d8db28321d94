"""Reasoning traces for chained + / − problems (the cold-start SFT data).

A step-by-step trace keeps a running total from left to right, one operation per step:
``<think>57+87=144, 144-70=74</think> <answer>74</answer>``. A shortcut trace evaluates the
whole chain in one step: ``<think>57+87-70=74</think> <answer>74</answer>`` (the same text for
two terms). A cold start that mixes both leaves a model that sometimes takes the shortcut, which
a small model gets wrong far more often: RL on checked answers teaches it to work step by step.
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


def solution_text(sample: Sample, shortcut: bool = False) -> str:
    """The completion the cold-start SFT teaches for one sample (``shortcut``: in one step)."""
    expression = sample.meta.get("expression")
    if expression is None:
        raise ValueError("traces need samples with an 'expression' in their metadata")
    steps, result = chain_trace(expression)
    if shortcut:
        steps = [f"{expression.replace(' ', '')}={result}"]
    return f"<think>{', '.join(steps)}</think> <answer>{result}</answer>"
