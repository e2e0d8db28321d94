import math

import pytest
import torch

from reasonrl.algos import gae, masked_mean, masked_var, masked_whiten, reinforce_pp_advantages


def test_gae_by_hand():
    # γ = 1, λ = 0.5, V = [0.5, 0.6, 0.8], reward 1 on the last token:
    # δ2 = 1 − 0.8 = 0.2 → A2 = 0.2;  δ1 = 0.8 − 0.6 = 0.2 → A1 = 0.2 + 0.5·0.2 = 0.3
    # δ0 = 0.6 − 0.5 = 0.1 → A0 = 0.1 + 0.5·0.3 = 0.25;  returns = A + V
    adv, ret = gae(
        torch.tensor([[0.0, 0.0, 1.0]]),
        torch.tensor([[0.5, 0.6, 0.8]]),
        torch.ones(1, 3),
        gamma=1.0,
        lam=0.5,
    )
    torch.testing.assert_close(adv, torch.tensor([[0.25, 0.3, 0.2]]))
    torch.testing.assert_close(ret, torch.tensor([[0.75, 0.9, 1.0]]))


def test_gae_discounts_by_hand():
    # γ = 0.5, λ = 1, V = 0: A1 = 2, A0 = 1 + 0.5·2 = 2 (the discounted return)
    adv, _ = gae(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), torch.ones(1, 2), 0.5, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[2.0, 2.0]]))


def test_gae_skips_masked_tokens():
    # The example above with a hole at t = 1 (its reward 9 and value 7 are ignored: token 0
    # bootstraps from token 2) and padding at t = 4.
    adv, ret = gae(
        torch.tensor([[0.0, 9.0, 0.0, 1.0, 0.0]]),
        torch.tensor([[0.5, 7.0, 0.6, 0.8, 3.0]]),
        torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]]),
        gamma=1.0,
        lam=0.5,
    )
    torch.testing.assert_close(adv, torch.tensor([[0.25, 0.0, 0.3, 0.2, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.75, 0.0, 0.9, 1.0, 0.0]]))


def _loop_gae(rewards, values, mask, gamma, lam):
    """The oracle: per row, the valid positions compacted into a list, then the textbook scan."""
    advs, rets = [], []
    for r, v, m in zip(rewards, values, mask, strict=True):
        idx = [t for t, x in enumerate(m) if x > 0]
        a, r_out = [0.0] * len(r), [0.0] * len(r)
        next_v, next_a = 0.0, 0.0
        for t in reversed(idx):
            next_a = r[t] + gamma * next_v - v[t] + gamma * lam * next_a
            next_v = v[t]
            a[t], r_out[t] = next_a, next_a + v[t]
        advs.append(a)
        rets.append(r_out)
    return advs, rets


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.7), (0.99, 1.0)])
def test_gae_vectorised_matches_loop(gamma, lam):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(6, 9, generator=gen, dtype=torch.float64)
    values = torch.randn(6, 9, generator=gen, dtype=torch.float64)
    mask = (torch.rand(6, 9, generator=gen) < 0.7).double()
    mask[0] = 0.0  # an empty row
    mask[1] = 1.0
    exp_adv, exp_ret = _loop_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor(exp_adv, dtype=torch.float64))
    torch.testing.assert_close(ret, torch.tensor(exp_ret, dtype=torch.float64))


def test_masked_statistics_by_hand():
    # valid 1, 2, 3 (100 is masked): mean 2, population variance (1 + 0 + 1)/3
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_var(x, mask).item() == pytest.approx(2 / 3)
    s = 1 / math.sqrt(2 / 3)
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([[-s, 0.0], [s, 0.0]]))


def test_reinforce_pp_by_hand():
    # token rewards [[0, 1], [0, ·]] (outcome on the last token), γ = 1:
    # returns-to-go [[1, 1], [0, ·]]; valid {1, 1, 0}: mean 2/3, var 2/9, std √2/3
    # → (1 − 2/3)·3/√2 = 1/√2 and (0 − 2/3)·3/√2 = −√2
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = reinforce_pp_advantages(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), mask)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(adv, torch.tensor([[s, s], [-math.sqrt(2), 0.0]]))


def test_reinforce_pp_discount_by_hand():
    # γ = 0.5: returns [[0.5, 1], [0, ·]]; valid {0.5, 1, 0}: mean 0.5, var 1/6
    # → 0, 0.5·√6 = √1.5, −√1.5
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = reinforce_pp_advantages(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), mask, gamma=0.5)
    s = math.sqrt(1.5)
    torch.testing.assert_close(adv, torch.tensor([[0.0, s], [-s, 0.0]]))
