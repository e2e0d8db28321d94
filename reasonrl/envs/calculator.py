"""The ``calculator`` tool: exact arithmetic on + - * / and parentheses, never ``eval``.

The expression is parsed with ``ast`` and every node checked against a whitelist (numbers,
the four operators, unary signs); the value is computed with ``fractions.Fraction``, so
``0.1 + 0.2`` is ``0.3`` and ``1/3`` stays ``1/3``. Names, calls, attributes, powers and
everything else are refused, and the expression's length is capped, which bounds the size of
the numbers it can make (no ``**``: a product of n digits has at most n digits).
"""

from __future__ import annotations

import ast
from fractions import Fraction

MAX_CHARS = 256
_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def calculator(expression: str) -> str:
    """Compute an arithmetic expression exactly.

    Args:
        expression: integers and decimals joined by + - * / with parentheses, e.g. "12.5*(3-1)"
    """
    if len(expression) > MAX_CHARS:
        raise ValueError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, RecursionError, ValueError):
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    return _format(_value(tree.body))


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        # the literal's text, not the float: Fraction("0.1") is 1/10, Fraction(0.1) is not
        return (
            Fraction(ast.unparse(node)) if isinstance(node.value, float) else Fraction(node.value)
        )
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _value(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ZeroDivisionError("division by zero")
        return _OPS[type(node.op)](left, right)
    raise ValueError(f"not allowed in an arithmetic expression: {ast.unparse(node)!r}")


def _format(value: Fraction) -> str:
    """An integer, a terminating decimal (denominator 2^a·5^b), else ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    d, twos, fives = value.denominator, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    digits = str(abs(value.numerator) * 10**places // value.denominator).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"
