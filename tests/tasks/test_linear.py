import re

import pytest

from reasonrl.config import ConfigError, TaskConfig
from reasonrl.tasks import load_splits
from reasonrl.tasks.linear import linear_function_samples
from reasonrl.tasks.traces import solution_text


def test_problem_answer_tests_and_trace_agree():
    (s,) = linear_function_samples(
        1, seed=3, params={"min_slope": 12, "max_slope": 12, "min_intercept": 7, "max_intercept": 7}
    )
    assert s.prompt == "Write a Python function f(x) with f(0) = 7 and f(1) = 19."
    assert s.answer == "def f(x): return 12*x+7"
    assert "assert f(5) == 67\n" in s.meta["tests"]["test_code"]
    assert "assert f(-3) == -29\n" in s.meta["tests"]["test_code"]
    assert s.meta["tests"]["kind"] == "asserts" and s.meta["extract"] == "answer"
    assert solution_text(s) == "<think>19-7=12</think> <answer>def f(x): return 12*x+7</answer>"
    # the trace has no hasty form: estimate is ignored
    assert solution_text(s, estimate=True) == solution_text(s)


def test_negative_slopes_and_the_tests_hold_for_the_canonical_function():
    samples = linear_function_samples(300, seed=0, params={})
    assert len({s.prompt for s in samples}) == 300
    assert any(s.meta["f1"] < s.meta["f0"] for s in samples)
    for s in samples:
        slope = s.meta["f1"] - s.meta["f0"]
        assert slope != 0
        assert s.answer == f"def f(x): return {slope}*x+{s.meta['f0']}"
        for line in s.meta["tests"]["test_code"].splitlines():
            x, y = re.fullmatch(r"assert f\((-?\d+)\) == (-?\d+)", line).groups()
            assert int(y) == slope * int(x) + s.meta["f0"]


def test_small_ranges_give_what_exists_and_bad_params_fail():
    few = linear_function_samples(
        100, 0, {"min_slope": 1, "max_slope": 2, "min_intercept": 0, "max_intercept": 1}
    )
    assert len(few) == 4
    with pytest.raises(ConfigError, match="unknown params"):
        linear_function_samples(5, 0, {"max_slop": 3})
    with pytest.raises(ConfigError, match="empty ranges"):
        linear_function_samples(5, 0, {"min_slope": 0, "max_slope": 0})


def test_procedural_source_splits_are_disjoint():
    cfg = TaskConfig(source="procedural", name="linear_function", train_size=400, eval_size=50)
    train, held_out = load_splits(cfg)
    assert len(held_out) == 50 and 300 < len(train) <= 400
    assert not {s.prompt for s in train} & {s.prompt for s in held_out}
    with pytest.raises(ConfigError, match="unknown procedural task 'linear_func'"):
        load_splits(TaskConfig(source="procedural", name="linear_func"))
