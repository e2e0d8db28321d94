import math

import pytest

from reasonrl.config import ConfigError
from reasonrl.rewards import exact_answer, extract_answer, score_batch, think_answer_format
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


def test_exact_answer_negative_and_comma_numbers():
    assert exact_answer("<answer>-1,234</answer>", Sample("q", "-1234")).score == 1.0
    assert exact_answer("<answer>1234</answer>", Sample("q", "-1234")).score == 0.0
    assert exact_answer("<answer>yes</answer>", Sample("q", "yes")).score == 1.0


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


def test_extract_answer():
    assert extract_answer("x <answer> 5 </answer>") == "5"
    assert extract_answer("<answer>5</answer><answer>6</answer>") is None


def test_score_batch_weights_and_components():
    scored = score_batch(
        ["<think>t</think> <answer>74</answer>", "<answer>74</answer>", "junk"],
        [S, S, S],
        {"answer": 1.0, "format": 0.1},
    )
    assert scored.components["answer"] == [1.0, 1.0, 0.0]
    assert scored.components["format"] == [1.0, 0.0, 0.0]
    assert [round(x, 6) for x in scored.total] == [1.1, 1.0, 0.0]
    assert not any(math.isnan(x) for x in scored.total)


def test_unknown_reward_name():
    with pytest.raises(ConfigError, match="answr"):
        score_batch(["x"], [S], {"answr": 1.0})
