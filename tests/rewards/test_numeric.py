import pytest

from reasonrl.rewards import exact_answer, numeric, parse_number
from reasonrl.tasks import Sample

S = Sample("What is 57 + 87 - 70?", "74")


@pytest.mark.parametrize(
    ("completion", "score", "status"),
    [
        ("<think>57+87=144, 144-70=74</think> <answer>74</answer>", 1.0, "ok"),
        ("<answer> 74 </answer>", 1.0, "ok"),
        ("<answer>74.0</answer>", 1.0, "ok"),
        ("<answer>+74</answer>", 1.0, "ok"),
        ("<answer>740</answer>", 0.0, "wrong"),
        ("<answer>7</answer>", 0.0, "wrong"),
        ("<answer>74 or 75</answer>", 0.0, "wrong"),
        ("<answer>73</answer><answer>74</answer>", 0.0, "unparsed"),  # hedging
        ("the answer is 74", 0.0, "unparsed"),
        ("<answer>74", 0.0, "unparsed"),
        ("", 0.0, "unparsed"),
    ],
)
def test_exact_answer(completion, score, status):
    result = exact_answer(completion, S)
    assert (result.score, result.status) == (score, status)


def test_exact_answer_negative_comma_and_text_answers():
    assert exact_answer("<answer>-1,234</answer>", Sample("q", "-1234")).score == 1.0
    assert exact_answer("<answer>1234</answer>", Sample("q", "-1234")).score == 0.0
    assert exact_answer("<answer>yes</answer>", Sample("q", "yes")).score == 1.0
    assert exact_answer("<answer>1,2</answer>", Sample("q", "12")).score == 0.0


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("74", "74"),
        ("-74", "-74"),
        ("+74", "74"),
        ("74.50", "74.5"),
        ("1,234", "1234"),
        ("-1,234,567.25", "-1234567.25"),
        (".5", "0.5"),
        ("5.", "5"),
        ("1e3", "1000"),
        (" 7 ", "7"),
        ("1,2", None),  # not a thousands separator
        ("12,34", None),
        ("1 234", None),
        ("5 or 6", None),
        ("NaN", None),
        ("Infinity", None),
        ("", None),
        (".", None),
        ("--5", None),
        ("0x10", None),
        ("½", None),
    ],
)
def test_parse_number(text, value):
    got = parse_number(text)
    assert (got if got is None else str(got.normalize())) == (
        value if value is None else str(parse_number(value).normalize())
    )


@pytest.mark.parametrize(
    ("gold", "completion", "score", "status"),
    [
        ("74", "<answer>74</answer>", 1.0, "ok"),
        ("74", "<answer>74.000</answer>", 1.0, "ok"),
        ("1234", "<answer>1,234</answer>", 1.0, "ok"),
        ("-0.5", "<answer>-.5</answer>", 1.0, "ok"),
        ("74", "<answer>75</answer>", 0.0, "wrong"),
        ("5", "<answer>15</answer>", 0.0, "wrong"),  # no substring credit
        ("74", "<answer>seventy-four</answer>", 0.0, "unparsed"),
        ("74", "<answer>74 or 75</answer>", 0.0, "unparsed"),
        ("74", "74", 0.0, "unparsed"),
        ("yes", "<answer>yes</answer>", None, "error"),  # the gold is not a number
    ],
)
def test_numeric(gold, completion, score, status):
    result = numeric(completion, Sample("q", gold))
    assert (result.score, result.status) == (score, status)
