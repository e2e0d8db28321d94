"""The ``correct`` verifier: math samples by their exact answer, programs in the sandbox."""

import pytest

from reasonrl.config import ConfigError
from reasonrl.rewards import get_verifier
from reasonrl.rewards.correct import CorrectVerifier
from reasonrl.sandbox import isolation_problem
from reasonrl.tasks import Sample
from reasonrl.tasks.linear import linear_function_samples

MATH = Sample("2 + 3 =", "5", {})


def test_math_samples_need_no_sandbox():
    verifier = CorrectVerifier(url="http://127.0.0.1:9")  # never contacted for math
    assert verifier("<think>2+3=5</think> <answer>5</answer>", MATH).score == 1.0
    assert verifier("<answer>6</answer>", MATH).score == 0.0
    assert [r.score for r in verifier.batch(["<answer>5</answer>", "5"], [MATH, MATH])] == [1, 0]
    assert isinstance(get_verifier("correct"), CorrectVerifier)
    with pytest.raises(ConfigError, match="extract 'fence' is not fenced, raw or answer"):
        get_verifier("code", extract="fence")


@pytest.mark.skipif(isolation_problem() is not None, reason=f"no sandbox: {isolation_problem()}")
def test_programs_run_against_their_tests_and_batches_keep_the_order():
    (linear,) = linear_function_samples(
        1, 0, {"min_slope": 12, "max_slope": 12, "min_intercept": 7, "max_intercept": 7}
    )
    verifier = CorrectVerifier(timeout=5.0)
    completions = [
        "<think>19-7=12</think> <answer>def f(x): return 12*x+7</answer>",
        "<think>x</think> <answer>def f(x): return x*12 + 19 - 12</answer>",  # another way
        "<think>19-7=11</think> <answer>def f(x): return 11*x+7</answer>",  # slope slip
        "<answer>def f(x) return 12*x+7</answer>",  # syntax error
        "<answer>5</answer>",
        "def f(x): return 12*x+7",  # no <answer> tag: nothing to run
    ]
    samples = [linear] * 5 + [linear]
    one_by_one = [verifier(c, s).score for c, s in zip(completions, samples, strict=True)]
    assert one_by_one == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    mixed = verifier.batch(
        [completions[2], "<answer>5</answer>", completions[0]], [linear, MATH, linear]
    )
    assert [r.score for r in mixed] == [0.0, 1.0, 1.0]
    assert mixed[1].status == "ok" and mixed[0].details["verdict"] == "failed"
