import functools
import sys
import types

import pytest

from reasonrl.config import ConfigError
from reasonrl.rewards import BUILTIN_VERIFIERS, RewardResult, get_verifier
from reasonrl.tasks import Sample

S = Sample("q", "5")


def test_builtin_names():
    assert {"answer", "format", "math", "numeric", "code", "reasoning_gym"} <= set(
        BUILTIN_VERIFIERS
    )
    assert get_verifier("answer")("<answer>5</answer>", S).score == 1.0


def test_options_are_bound_and_checked():
    verifier = get_verifier("overlong", max_length=10, buffer=5, unit="chars")
    assert isinstance(verifier, functools.partial)
    assert verifier("x" * 10, S).score == -1.0
    with pytest.raises(ConfigError, match="unexpected keyword argument 'unt'"):
        get_verifier("overlong", max_length=10, buffer=5, unt="chars")
    with pytest.raises(ConfigError, match="missing a required argument: 'buffer'"):
        get_verifier("overlong", max_length=10)
    with pytest.raises(ConfigError, match="answer"):
        get_verifier("answer", strict=True)


def test_unknown_name_suggests():
    with pytest.raises(ConfigError, match="did you mean 'format'"):
        get_verifier("fromat")


@pytest.fixture
def user_module(monkeypatch):
    module = types.ModuleType("my_rewards")

    def brevity(completion: str, sample: Sample, *, limit: int = 10) -> RewardResult:
        return RewardResult(1.0 if len(completion) <= limit else 0.0, "ok")

    class Always:
        def __init__(self, value: float) -> None:
            self.value = value

        def __call__(self, completion: str, sample: Sample) -> RewardResult:
            return RewardResult(self.value, "ok")

    module.brevity, module.Always = brevity, Always
    monkeypatch.setitem(sys.modules, "my_rewards", module)
    return module


def test_user_verifiers_by_import_path(user_module):
    assert get_verifier("my_rewards:brevity")("short", S).score == 1.0
    assert get_verifier("my_rewards:brevity", limit=2)("short", S).score == 0.0
    assert get_verifier("my_rewards:Always", value=0.25)("x", S).score == 0.25
    with pytest.raises(ConfigError, match="cannot import"):
        get_verifier("my_rewards:nope")
    with pytest.raises(ConfigError, match="cannot import"):
        get_verifier("no_such_module_xyz:fn")
