import pytest

from reasonrl.rewards.fmt import (
    length_penalty,
    overlong,
    repetition,
    tag_count,
    think_answer_format,
)
from reasonrl.tasks import Sample

S = Sample("q", "1")


@pytest.mark.parametrize(
    ("completion", "score"),
    [
        ("<think>a</think> <answer>1</answer>", 1.0),
        ("<think>a</think><answer>1</answer>", 1.0),
        ("  <think>a\nb</think>\n<answer>1</answer>\n", 1.0),
        ("<answer>1</answer>", 0.0),
        ("<think>a</think>", 0.0),
        ("<think>a</think> <answer>1</answer> trailing", 0.0),
        ("<think>a</think> <answer>1</answer><answer>2</answer>", 0.0),
        ("<think><think>a</think> <answer>1</answer>", 0.0),
        ("<answer>1</answer> <think>a</think>", 0.0),
    ],
)
def test_think_answer_format(completion, score):
    assert think_answer_format(completion, S).score == score


@pytest.mark.parametrize(
    ("completion", "score"),
    [
        ("reasoning</think> <answer>1</answer>", 1.0),
        ("</think><answer>1</answer>", 1.0),
        ("<think>again</think> <answer>1</answer>", 0.0),  # the template already opened it
        ("reasoning <answer>1</answer>", 0.0),
        ("a</think> b</think> <answer>1</answer>", 0.0),
    ],
)
def test_format_with_prefilled_think(completion, score):
    assert think_answer_format(completion, S, prefilled_think=True).score == score


@pytest.mark.parametrize(
    ("completion", "prefilled", "score"),
    [
        ("<think>a</think> <answer>1</answer>", False, 1.0),
        ("<think>a</think>", False, 0.5),
        ("<think>a</think><think>b</think> <answer>1</answer>", False, 0.5),  # repeats earn 0
        ("<answer>1</answer>" * 5, False, 0.0),
        ("", False, 0.0),
        ("a</think> <answer>1</answer>", True, 1.0),
        ("a</think>", True, 1 / 3),
    ],
)
def test_tag_count(completion, prefilled, score):
    assert tag_count(completion, S, prefilled_think=prefilled).score == pytest.approx(score)


@pytest.mark.parametrize(
    ("n", "score"),
    [(0, 0.0), (60, 0.0), (70, -0.25), (80, -0.5), (100, -1.0), (500, -1.0)],
)
def test_overlong_is_dapo_soft_punishment(n, score):
    # max 100, buffer 40: free up to 60, then linear to -1 at 100
    result = overlong("x", S, max_length=100, buffer=40, n_tokens=n)
    assert result.score == pytest.approx(score)
    chars = overlong("x" * n, S, max_length=100, buffer=40, unit="chars")
    assert chars.score == pytest.approx(score)


def test_length_penalties_need_token_counts_when_counting_tokens():
    for result in (
        overlong("x", S, max_length=10, buffer=5),
        length_penalty("x", S, max_length=10),
    ):
        assert (result.score, result.status) == (None, "error")


@pytest.mark.parametrize(("n", "score"), [(0, 0.0), (25, -0.25), (100, -1.0), (1000, -1.0)])
def test_length_penalty(n, score):
    assert length_penalty("x", S, max_length=100, n_tokens=n).score == pytest.approx(score)


@pytest.mark.parametrize(
    ("completion", "score"),
    [
        ("", 0.0),
        ("one two", 0.0),
        ("a b c d e f g", 0.0),
        ("a b c a b c", -0.25),  # 4 trigrams, 3 distinct
        ("go " * 50, -1 + 1 / 48),
    ],
)
def test_repetition_penalty(completion, score):
    assert repetition(completion, S).score == pytest.approx(score)
    assert repetition(completion, S, max_penalty=0.5).score == pytest.approx(score / 2)


@pytest.mark.parametrize("text", ["", "a", "<think>" * 9, "go " * 99, "x" * 10_000])
def test_penalties_are_never_positive(text):
    assert overlong(text, S, max_length=50, buffer=10, unit="chars").score <= 0
    assert length_penalty(text, S, max_length=50, unit="chars").score <= 0
    assert repetition(text, S).score <= 0
