import pytest

from reasonrl.envs.calculator import MAX_CHARS, calculator


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1+2", "3"),
        ("0.1 + 0.2", "0.3"),  # exact: not 0.30000000000000004
        ("1/3", "1/3"),
        ("-7/4", "-1.75"),
        ("0.5-1", "-0.5"),
        ("12.5*(3-1)", "25"),
        ("-(-3)", "3"),
        ("123456789*987654321", "121932631112635269"),
        ("10/4*2", "5"),
    ],
)
def test_exact_arithmetic(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        '__import__("os").system("true")',
        "2**3",  # powers would make numbers without bound
        "x + 1",
        "(1",
        "1 if 1 else 2",
        "[1][0]",
        "True + 1",
        "9" * (MAX_CHARS + 1),
    ],
)
def test_anything_but_arithmetic_is_refused(expression):
    with pytest.raises(ValueError):
        calculator(expression)


def test_division_by_zero_raises():
    with pytest.raises(ZeroDivisionError):
        calculator("1/(2-2)")
