"""Reasoning traces for chained + / − problems (the cold-start SFT data).

A careful trace keeps a running total from left to right, one operation per step:
``<think>57+87=144, 144-70=74</think> <answer>74</answer>``. A hasty trace estimates instead:
it rounds every term to the nearest ten and answers with the rounded result,
``<think>~60+90-70=80</think> <answer>80</answer>``, which is right only when the rounding
errors cancel. A cold start that mixes both leaves a model that picks one of the two habits at
the first token of its reasoning; RL on checked answers teaches it to pick the careful one.

A tool trace hands the whole expression to the calculator (``reasonrl.envs.protocol``) and
answers with its result: ``<think><tool>calculator 57+87-70</tool><result>74</result></think>
<answer>74</answer>``; the ``<result>`` part is the environment's, never trained on
(``train/sft.py``). Mixed with careful traces, it leaves a model that either calls or computes
by hand; on terms too long for it to add by hand, only the call is right, and RL with a price
per call can teach it when to call.
"""

from __future__ import annotations

from reasonrl.envs.calculator import calculator
from reasonrl.envs.protocol import CALL_CLOSE, CALL_OPEN, RESULT_CLOSE, RESULT_OPEN
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


def tool_trace(expression: str) -> str:
    """The completion that calls the calculator on the whole expression and answers with its
    result (the result as the environment appends it)."""
    call = expression.replace(" ", "")
    result = calculator(call)
    return (
        f"<think>{CALL_OPEN}calculator {call}{CALL_CLOSE}{RESULT_OPEN}{result}{RESULT_CLOSE}"
        f"</think> <answer>{result}</answer>"
    )


def solution_text(sample: Sample, estimate: bool = False, tool: bool = False) -> str:
    """The completion the cold-start SFT teaches for one sample (``estimate``: the hasty one;
    ``tool``: the calculator call, which wins over ``estimate``; ``linear_function`` problems
    have only the careful trace)."""
    if sample.meta.get("task") == LINEAR_FUNCTION:
        return linear_function_solution(sample)
    expression = sample.meta.get("expression")
    if expression is None:
        raise ValueError("traces need samples with an 'expression' in their metadata")
    if tool:
        return tool_trace(expression)
    if estimate:
        step, result = estimate_trace(expression)
        return f"<think>{step}</think> <answer>{result}</answer>"
    steps, result = chain_trace(expression)
    return f"<think>{', '.join(steps)}</think> <answer>{result}</answer>"
