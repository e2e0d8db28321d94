import dataclasses
import math
from typing import get_args

import pytest
import torch

from reasonrl.algos import (
    ADVANTAGES,
    AdvantageInput,
    dr_grpo_advantages,
    get_advantage,
    grpo_advantages,
    rloo_advantages,
)
from reasonrl.config import BuiltinAdvantage, ConfigError

NAN = math.nan


def test_grpo_by_hand():
    # mean 0.5; unbiased std = sqrt(4 * 0.25 / 3) = 0.57735
    adv = grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), eps=1e-4)
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([[expected, -expected, -expected, expected]]))


def test_uncomputed_rewards_are_left_out_of_the_statistics():
    # valid rewards 1 and 0: mean 0.5, std sqrt(0.5) → the NaN entry gets 0
    adv = grpo_advantages(torch.tensor([[1.0, NAN, 0.0]]), eps=0.0)
    s = 0.5 / math.sqrt(0.5)
    torch.testing.assert_close(adv, torch.tensor([[s, 0.0, -s]]))


def test_degenerate_groups_get_zero_advantage():
    adv = grpo_advantages(torch.tensor([[1.0, 1.0, 1.0], [NAN, 2.0, NAN]]))
    assert torch.equal(adv, torch.zeros(2, 3))


def test_scale_none_and_batch():
    r = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    torch.testing.assert_close(
        grpo_advantages(r, scale="none"), torch.tensor([[0.5, -0.5], [0.0, 0.0]])
    )
    batch_std = r.flatten().std().item()  # unbiased over all 4 rewards
    torch.testing.assert_close(
        grpo_advantages(r, scale="batch", eps=0.0),
        torch.tensor([[0.5 / batch_std, -0.5 / batch_std], [0.0, 0.0]]),
    )
    with pytest.raises(ValueError):
        grpo_advantages(r, scale="rank")


def _loop_grpo(rewards: list[list[float]], eps: float) -> list[list[float]]:
    out = []
    for group in rewards:
        valid = [x for x in group if not math.isnan(x)]
        if len(valid) < 2:
            out.append([0.0] * len(group))
            continue
        mean = sum(valid) / len(valid)
        std = math.sqrt(sum((x - mean) ** 2 for x in valid) / (len(valid) - 1))
        out.append([0.0 if math.isnan(x) else (x - mean) / (std + eps) for x in group])
    return out


def test_vectorised_matches_loop():
    gen = torch.Generator().manual_seed(0)
    r = torch.randint(0, 3, (16, 8), generator=gen).double()
    r[torch.rand(16, 8, generator=gen) < 0.15] = NAN
    expected = torch.tensor(_loop_grpo(r.tolist(), 1e-4), dtype=torch.float64)
    torch.testing.assert_close(grpo_advantages(r, eps=1e-4), expected)


def test_dr_grpo_by_hand():
    # mean 0.5, no std division; [2, NaN, 4]: mean 3 over the valid two
    adv = dr_grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, NAN, 4.0, NAN]]))
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5], [-1.0, 0.0, 1.0, 0.0]]))


def test_rloo_by_hand():
    # [1, 0, 0, 1]: a 1 is compared with (0 + 0 + 1) / 3, a 0 with (1 + 0 + 1) / 3
    # [3, NaN, 1, 2]: 3 − (1 + 2)/2 = 1.5, 1 − (3 + 2)/2 = −1.5, 2 − (3 + 1)/2 = 0
    # [NaN, 5, NaN, NaN]: a single valid reward has no baseline → 0
    adv = rloo_advantages(
        torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, NAN, 1.0, 2.0], [NAN, 5.0, NAN, NAN]])
    )
    expected = torch.tensor(
        [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [1.5, 0.0, -1.5, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(adv, expected)


def _loop_rloo(rewards: list[list[float]]) -> list[list[float]]:
    out = []
    for group in rewards:
        row = []
        for i, x in enumerate(group):
            others = [y for j, y in enumerate(group) if j != i and not math.isnan(y)]
            row.append(0.0 if math.isnan(x) or not others else x - sum(others) / len(others))
        out.append(row)
    return out


def test_rloo_vectorised_matches_loop():
    gen = torch.Generator().manual_seed(1)
    r = torch.rand(16, 8, generator=gen, dtype=torch.float64)
    r[torch.rand(16, 8, generator=gen) < 0.2] = NAN
    r[0, 1:] = NAN  # a group with one valid reward
    expected = torch.tensor(_loop_rloo(r.tolist()), dtype=torch.float64)
    torch.testing.assert_close(rloo_advantages(r), expected)


# --------------------------------------------------------------------------- the registry


def _input(rewards, mask, token_rewards=None, values=None, **params):
    mask = torch.tensor(mask)
    token_rewards = torch.zeros_like(mask) if token_rewards is None else torch.tensor(token_rewards)
    values = None if values is None else torch.tensor(values)
    return AdvantageInput(torch.tensor(rewards), token_rewards, mask, values, **params)


def test_every_estimator_has_the_one_signature_and_the_config_names_them_all():
    assert set(ADVANTAGES) == set(get_args(BuiltinAdvantage))
    x = _input([[1.0, 0.0]], [[1.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]], [[0.0] * 2] * 2)
    x = dataclasses.replace(x, std_eps=1e-8, gamma=1.0, lam=1.0)
    for name, estimator in ADVANTAGES.items():
        adv, returns = estimator(x)
        assert adv.shape == (2, 2), name
        assert (returns is not None) == (name == "gae"), name
        assert get_advantage(name) is estimator


def test_group_estimators_give_each_loss_token_its_completions_advantage():
    # rloo of [3, 1, NaN]: 3 − 1 = 2, 1 − 3 = −2, the uncomputed one 0 (but its tokens stay)
    x = _input([[3.0, 1.0, NAN]], [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    adv, returns = ADVANTAGES["rloo"](x)
    torch.testing.assert_close(adv, torch.tensor([[2.0, 2.0], [-2.0, 0.0], [0.0, 0.0]]))
    assert returns is None


def test_group_estimators_whiten_over_the_loss_tokens():
    # dr_grpo of [2, 0]: [1, −1] on 2 and 1 tokens: mean 1/3, population var 8/9
    x = _input([[2.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]], whiten=True, std_eps=1e-8)
    adv, _ = ADVANTAGES["dr_grpo"](x)
    hi, lo = (1 - 1 / 3) / math.sqrt(8 / 9), (-1 - 1 / 3) / math.sqrt(8 / 9)
    torch.testing.assert_close(adv, torch.tensor([[hi, hi], [lo, 0.0]]))


def test_token_estimators_mark_an_uncomputed_completion_nan_and_leave_it_out():
    # reinforce_pp_by_hand in test_returns, plus a third completion whose reward is uncomputed:
    # it has no reward to return, so its tokens get NaN (no loss) and stay out of the whitening
    x = _input(
        [[1.0, 0.0, NAN]],
        [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]],
        [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]],
        std_eps=1e-8,
    )
    adv, _ = ADVANTAGES["reinforce_pp"](x)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(adv[:2], torch.tensor([[s, s], [-math.sqrt(2), 0.0]]))
    assert torch.isnan(adv[2]).all()


def test_gae_by_hand_through_the_registry():
    # one completion of 2 tokens, reward 1 on the last, V = [0.5, 0.25], γ = λ = 1:
    # A_1 = 1 − 0.25 = 0.75, A_0 = 0 + 0.25 − 0.5 + 0.75 = 0.5; returns A + V = [1, 1]
    x = _input([[1.0]], [[1.0, 1.0]], [[0.0, 1.0]], [[0.5, 0.25]], gamma=1.0, lam=1.0)
    adv, returns = ADVANTAGES["gae"](x)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.75]]))
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="critic"):
        ADVANTAGES["gae"](dataclasses.replace(x, values=None))


def centred_sum(x: AdvantageInput) -> tuple[torch.Tensor, None]:
    """A user's estimator: each completion's reward minus the mean of all, on every token."""
    flat = x.rewards.flatten()
    return (flat - flat.mean()).unsqueeze(-1) * x.mask, None


def test_a_user_estimator_by_import_path():
    estimator = get_advantage(f"{__name__}:centred_sum")
    adv, _ = estimator(_input([[3.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]]))
    torch.testing.assert_close(adv, torch.tensor([[1.0, 0.0], [-1.0, -1.0]]))
    with pytest.raises(ConfigError, match="cannot import advantage 'no_such_module_xyz:fn'"):
        get_advantage("no_such_module_xyz:fn")
    with pytest.raises(ConfigError, match=f"cannot import advantage '{__name__}:nope'"):
        get_advantage(f"{__name__}:nope")
    with pytest.raises(ConfigError, match="did you mean 'rloo'"):
        get_advantage("rlooo")
