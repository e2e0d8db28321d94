import pytest

from reasonrl.rewards.gym import reasoning_gym_score
from reasonrl.tasks import Sample

S = Sample("What is 2 + 3?", "5", {"source_dataset": "chain_sum"})


@pytest.mark.parametrize(
    ("completion", "partial", "score", "status"),
    [
        ("<answer>5</answer>", False, 1.0, "ok"),
        ("<answer>15</answer>", False, 0.0, "wrong"),  # reasoning-gym itself would give 0.5
        ("<answer>15</answer>", True, 0.5, "wrong"),
        ("<answer>6</answer>", True, 0.0, "wrong"),
        ("5", False, 0.0, "unparsed"),
    ],
)
def test_reasoning_gym_scorer_without_partial_credit(completion, partial, score, status):
    result = reasoning_gym_score(completion, S, partial=partial)
    assert (result.score, result.status) == (score, status)


def test_dataset_comes_from_the_option_or_the_sample():
    bare = Sample("q", "5")
    assert reasoning_gym_score("<answer>5</answer>", bare, dataset="chain_sum").score == 1.0
    result = reasoning_gym_score("<answer>5</answer>", bare)
    assert (result.score, result.status) == (None, "error")
