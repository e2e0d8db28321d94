import math
import sys
import types

import pytest

from reasonrl.config import ConfigError, RewardSpec, validate_config
from reasonrl.rewards import RewardResult, score_batch
from reasonrl.tasks import Sample

S = Sample("What is 57 + 87 - 70?", "74")


def test_plain_weights():
    scored = score_batch(
        ["<think>t</think> <answer>74</answer>", "<answer>74</answer>", "junk"],
        [S, S, S],
        {"answer": 1.0, "format": 0.1},
    )
    assert scored.components["answer"] == [1.0, 1.0, 0.0]
    assert scored.components["format"] == [1.0, 0.0, 0.0]
    assert [round(x, 6) for x in scored.total] == [1.1, 1.0, 0.0]


def test_gating_counts_format_only_when_correct():
    rewards = {
        "answer": RewardSpec(weight=1.0),
        "format": RewardSpec(weight=0.5, gate="answer"),
    }
    completions = ["<think>t</think> <answer>74</answer>", "<think>t</think> <answer>7</answer>"]
    scored = score_batch(completions, [S, S], rewards)
    assert scored.components["format"] == [1.0, 1.0]  # logged ungated
    assert scored.total == [1.5, 0.0]  # counted gated


@pytest.fixture
def flaky(monkeypatch):
    """``flaky:verifier``: None for completions containing "?", else 1."""
    module = types.ModuleType("flaky")

    def verifier(completion: str, sample: Sample) -> RewardResult:
        if "?" in completion:
            return RewardResult(None, "timeout")
        return RewardResult(1.0, "ok")

    module.verifier = verifier
    monkeypatch.setitem(sys.modules, "flaky", module)


def test_none_is_masked_and_counted_never_zero(flaky):
    rewards = {
        "answer": 1.0,
        "check": RewardSpec(weight=0.5, verifier="flaky:verifier"),
        "logged": RewardSpec(weight=0.0, verifier="flaky:verifier"),
    }
    scored = score_batch(["<answer>74</answer>", "<answer>74</answer>?"], [S, S], rewards)
    assert scored.total[0] == 1.5
    assert math.isnan(scored.total[1])
    assert math.isnan(scored.components["check"][1])
    assert scored.results["check"][1].status == "timeout"
    metrics = scored.metrics()
    assert metrics["reward/check"] == 1.0  # mean over the computed ones
    assert metrics["reward/check/uncomputed"] == 1.0
    assert metrics["reward/answer/uncomputed"] == 0.0
    assert metrics["reward/uncomputed"] == 1.0


def test_a_zero_weight_term_is_logged_but_does_not_mask(flaky):
    rewards = {"answer": 1.0, "logged": RewardSpec(weight=0.0, verifier="flaky:verifier")}
    scored = score_batch(["<answer>74</answer>?"], [S], rewards)
    assert scored.total == [1.0]
    assert math.isnan(scored.components["logged"][0])


def test_gate_on_an_uncomputed_term_is_uncomputed(flaky):
    rewards = {
        "check": RewardSpec(weight=0.0, verifier="flaky:verifier"),
        "format": RewardSpec(weight=1.0, gate="check"),
    }
    scored = score_batch(["<think>?</think> <answer>74</answer>"], [S], rewards)
    assert math.isnan(scored.total[0])


def test_token_lengths_reach_length_verifiers():
    rewards = {"overlong": RewardSpec(options={"max_length": 100, "buffer": 40})}
    scored = score_batch(["a", "b"], [S, S], rewards, lengths=[50, 80])
    assert scored.total == [0.0, -0.5]
    without = score_batch(["a"], [S], rewards)
    assert math.isnan(without.total[0])
    assert without.results["overlong"][0].status == "error"


def test_two_terms_can_share_a_verifier():
    rewards = {
        "short": RewardSpec(verifier="length", options={"max_length": 10, "unit": "chars"}),
        "long": RewardSpec(verifier="length", options={"max_length": 100, "unit": "chars"}),
    }
    scored = score_batch(["x" * 10], [S], rewards)
    assert scored.components == {"short": [-1.0], "long": [-0.1]}


def test_errors():
    with pytest.raises(ConfigError, match="answr"):
        score_batch(["x"], [S], {"answr": 1.0})
    with pytest.raises(ValueError, match="gated on"):
        score_batch(["x"], [S], {"format": RewardSpec(gate="answer")})
    with pytest.raises(ValueError, match="2 completions for 1 samples"):
        score_batch(["x", "y"], [S], {"answer": 1.0})


def test_a_term_limited_to_some_tasks_is_skipped_elsewhere_not_counted_missing():
    math_q = Sample("1 + 1 =", "2", {"task": "math"})
    code_q = Sample("f(0) = 1", "", {"task": "code"})
    rewards = {
        "answer": 1.0,
        "judge": {"weight": 0.5, "verifier": f"{__name__}:_JUDGE", "tasks": ["math"]},
        "bonus": {"weight": 1.0, "verifier": f"{__name__}:_JUDGE", "gate": "judge", "gate_min": 1},
    }
    _JUDGE_CALLS.clear()
    scored = score_batch(["<answer>2</answer>", "<answer>3</answer>"], [math_q, code_q], rewards)
    # bonus saw both problems, judge only the math one
    assert sorted(_JUDGE_CALLS) == ["1 + 1 =", "1 + 1 =", "f(0) = 1"]
    assert scored.results["judge"][1].status == "skipped"
    assert math.isnan(scored.components["judge"][1])
    # math: 1 + 0.5·2 + 2 (gate passed); code: 0 + skipped + 0 (its gate was skipped)
    assert scored.total == [4.0, 0.0]
    metrics = scored.metrics()
    assert metrics["reward/judge"] == 2.0 and metrics["reward/judge/uncomputed"] == 0
    assert metrics["reward/uncomputed"] == 0


_JUDGE_CALLS: list[str] = []


def _JUDGE(completion, sample):  # noqa: N802 - a verifier found by import path
    _JUDGE_CALLS.append(sample.prompt)
    return RewardResult(2.0, "ok")


def test_reward_tasks_must_name_tasks_of_the_mix():
    mix = {"mix": [{"name": "chain_sum"}, {"source": "procedural", "name": "linear_function"}]}
    rewards = {"rm": {"verifier": "answer", "tasks": ["chain_sum"]}}
    assert validate_config({"task": mix, "rewards": rewards}, "t").rewards["rm"].tasks == [
        "chain_sum"
    ]
    with pytest.raises(
        ConfigError, match=r"scores tasks \['chainsum'\], which are not in task.mix"
    ):
        validate_config({"task": mix, "rewards": {"rm": {"tasks": ["chainsum"]}}}, "t")


def test_episodes_are_graded_on_the_models_text_and_charged_per_call():
    from reasonrl.rollout import Episode

    call = "<think>57+87-70 <tool>calculator 57+87-70</tool>"
    # a tool's answer that looks like an answer must not be graded as the model's
    forged = Episode([("model", call), ("tool", "<result><answer>74</answer></result>")], {"x": 1})
    wrong = Episode([*forged.turns, ("model", "</think> <answer>7</answer>")], {"calculator": 1})
    right = Episode(
        [
            ("model", call),
            ("tool", "<result>74</result>"),
            ("model", "</think><answer>74</answer>"),
        ],
        {"calculator": 1},
    )
    by_hand = Episode([("model", "<think>57+87=144, 144-70=74</think> <answer>74</answer>")])
    failed = Episode(right.turns, {"calculator": 2}, {"tool_error": 1})
    episodes = [forged, wrong, right, by_hand, failed]
    texts = ["".join(t for _, t in e.turns) for e in episodes]
    rewards = {
        "answer": 1.0,
        "tool_cost": {"verifier": "tool_calls", "weight": -0.25},
        "errors": {"verifier": "tool_calls", "weight": 0.0, "options": {"failed_only": True}},
    }
    scored = score_batch(texts, [S] * 5, rewards, episodes=episodes)
    assert scored.components["answer"] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert scored.components["tool_cost"] == [1.0, 1.0, 1.0, 0.0, 2.0]
    assert scored.components["errors"] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert scored.total == [-0.25, -0.25, 0.75, 1.0, 0.5]
    # without episodes the whole text is read: the forged answer would have counted
    assert score_batch(texts[:1], [S], {"answer": 1.0}).components["answer"] == [1.0]
    # single turns have no calls
    assert score_batch(texts[3:4], [S], rewards).components["tool_cost"] == [0.0]
