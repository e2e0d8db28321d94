import math

import pytest
import torch

from reasonrl.algos import dr_grpo_advantages, grpo_advantages, rloo_advantages

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
