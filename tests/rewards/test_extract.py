import pytest

from reasonrl.rewards import extract_answer, last_boxed, last_code_block, math_answer


def test_extract_answer():
    assert extract_answer("x <answer> 5 </answer>") == "5"
    assert extract_answer("<answer>5</answer><answer>6</answer>") is None
    assert extract_answer("no tags") is None


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("so \\boxed{5}.", "5"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed {x^{2}}", "x^{2}"),
        ("\\fbox{7}", "7"),
        ("\\boxed{unclosed", None),
        ("nothing", None),
    ],
)
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


def test_math_answer_prefers_the_answer_tag():
    assert math_answer("\\boxed{1} <answer>2</answer>") == "2"
    assert math_answer("<answer>1</answer><answer>2</answer> \\boxed{3}") == "3"
    assert math_answer("none") is None


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("```python\nx = 1\n```", "x = 1\n"),
        ("```\na\n```\ntext\n```py\nb\n```", "b\n"),
        ("```python\nfirst\n```\n```bash\nls\n```", "first\n"),
        ("```python3\ny\n```", "y\n"),
        ("no code", None),
        ("```python\nunclosed", None),
    ],
)
def test_last_code_block(text, code):
    assert last_code_block(text) == code
