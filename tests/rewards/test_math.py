"""The ``math`` verifier against a table of equivalences and non-equivalences (gold first)."""

import time

import pytest

from reasonrl.rewards.math import MathVerifier
from reasonrl.tasks import Sample

U = "unparsed"

TABLE = [
    # integers, signs, separators
    ("3", "3", 1),
    ("3", "03", 1),
    ("3", "+3", 1),
    ("-3", "-3", 1),
    ("-3", "3", 0),
    ("3", "4", 0),
    ("1000", "1,000", 1),
    ("1,000", "1000", 1),
    ("1000000", "1{,}000{,}000", 1),
    ("10", "10.0", 1),
    ("10", "10.5", 0),
    ("2^{10}", "1024", 1),
    # fractions
    ("\\frac{1}{2}", "1/2", 1),
    ("\\frac{1}{2}", "\\dfrac{1}{2}", 1),
    ("\\frac{1}{2}", "\\tfrac12", 1),
    ("\\frac{1}{2}", "0.5", 1),
    ("\\frac{1}{2}", "2/4", 1),
    ("\\frac{1}{2}", "\\frac{1}{3}", 0),
    ("\\frac{2}{3}", "0.67", 0),
    ("\\frac{2}{3}", "0.6667", 0),  # a rounded decimal is not the fraction
    ("-\\frac{3}{4}", "\\frac{-3}{4}", 1),
    ("\\frac{3}{4}", "\\frac{4}{3}", 0),
    # decimals
    ("0.25", "\\frac{1}{4}", 1),
    ("0.25", ".25", 1),
    ("0.25", "0.250", 1),
    ("0.25", "0.26", 0),
    # percentages
    ("50\\%", "50", 1),
    ("50\\%", "0.5", 1),
    ("50\\%", "50\\%", 1),
    ("0.5", "50\\%", 1),
    ("25\\%", "0.2", 0),
    # sets, tuples, intervals
    ("\\{1,2,3\\}", "\\{3,2,1\\}", 1),
    ("\\{1,2\\}", "\\{1,2,3\\}", 0),
    ("(1,2)", "(1,2)", 1),
    ("(1,2)", "(2,1)", 0),
    ("[0,1]", "[0, 1]", 1),
    ("[0,1]", "(0,1)", 0),
    ("(0,\\infty)", "(0, \\infty)", 1),
    ("(-\\infty, 2]", "(-\\infty,2)", 0),
    ("[1,2)\\cup(3,4]", "[1,2) \\cup (3,4]", 1),
    # radicals, pi, expressions
    ("\\sqrt{2}", "\\sqrt2", 1),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", 1),
    ("2\\sqrt{3}", "\\sqrt{12}", 1),
    ("\\sqrt{2}", "\\sqrt{3}", 0),
    ("\\pi", "\\pi", 1),
    ("2\\pi", "\\pi \\cdot 2", 1),
    ("\\pi", "3", 0),
    ("x^2+2x+1", "(x+1)^2", 1),
    ("x^2-1", "(x-1)(x+1)", 1),
    ("x^2", "2x", 0),
    # LaTeX variants
    ("\\frac{1}{2}", "\\left(\\frac{1}{2}\\right)", 1),
    ("5", "\\textbf{5}", 1),
    ("5", "\\mathbf{5}", 1),
    ("5", "{5}", 1),
    ("12", "\\boxed{12}", 1),
    # units
    ("10", "10\\text{ cm}", 1),
    ("10", "10 \\text{ meters}", 1),
    ("10", "11\\text{ cm}", 0),
    ("90^\\circ", "90", 1),
    # equations
    ("3", "x=3", 1),
    ("3", "x = 3", 1),
    ("3", "x=4", 0),
    ("x=3", "3", 1),
    ("y=2x+1", "y = 1 + 2x", 1),
    # hedges and malformed answers
    ("5", "5 or 6", 0),
    ("5", "5, 6", 0),
    ("5", "\\{5, 6\\}", 0),
    ("5", "56", 0),
    ("5", "x", 0),
    ("5", "five", 0),
    ("5", "{", 0),
    ("5", "\\frac{", 0),
    ("5", "", U),
]


@pytest.fixture(scope="module")
def verifier() -> MathVerifier:
    return MathVerifier(timeout=10.0, workers=2)


def test_table_is_large_enough():
    assert len(TABLE) >= 60


def test_equivalence_table(verifier):
    completions = [f"<think>…</think> <answer>{answer}</answer>" for _, answer, _ in TABLE]
    samples = [Sample("q", gold) for gold, _, _ in TABLE]
    results = verifier.batch(completions, samples)
    wrong = []
    for (gold, answer, want), r in zip(TABLE, results, strict=True):
        got = U if r.status == U else r.score
        if got != want:
            wrong.append((gold, answer, want, got, r.status))
    assert not wrong


@pytest.mark.parametrize(
    ("completion", "score", "status"),
    [
        ("so the answer is \\boxed{\\frac{1}{2}}", 1.0, "ok"),
        ("<answer>\\boxed{0.5}</answer>", 1.0, "ok"),
        ("\\boxed{1} and finally \\boxed{2}", 0.0, "wrong"),
        ("<answer>1/2</answer><answer>3</answer>", 0.0, U),  # two answers and no box
        ("the answer is one half", 0.0, U),
        ("<answer>" + "1+" * 600 + "1</answer>", 0.0, U),  # over max_chars
    ],
)
def test_answer_extraction(verifier, completion, score, status):
    result = verifier(completion, Sample("q", "\\frac{1}{2}"))
    assert (result.score, result.status) == (score, status)


def test_pathological_input_times_out_instead_of_hanging():
    # scored 0, not None: an unevaluable answer must not escape the advantage of a wrong one
    verifier = MathVerifier(timeout=1.0, workers=1)
    start = time.monotonic()
    result = verifier("<answer>\\dfrac{5^{5^{5^{5^5}}}}{3}</answer>", Sample("q", "\\frac{5}{3}"))
    assert (result.score, result.status) == (0.0, "timeout")
    assert time.monotonic() - start < 5.0  # the deadline, plus killing the worker
    # the killed worker was replaced: the pool still answers
    again = verifier("<answer>3</answer>", Sample("q", "3"))
    assert (again.score, again.status) == (1.0, "ok")
