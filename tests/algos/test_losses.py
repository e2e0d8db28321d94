import math

import pytest
import torch

from reasonrl.algos import (
    aggregate,
    clipped_surrogate,
    kl_estimate,
    sft_loss,
    token_entropy,
    token_logprobs,
)

LOG = math.log


def test_clipped_surrogate_by_hand():
    # ratios 1.5, 1.5, 0.5, 0.5 against advantages +1, -1, +1, -1; ε = 0.2
    logp = torch.tensor([[LOG(1.5), LOG(1.5), LOG(0.5), LOG(0.5)]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped = clipped_surrogate(logp, old, adv, 0.2, 0.2)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 1.5, -0.5, 0.8]]))
    assert clipped.tolist() == [[True, False, False, True]]


def test_clip_higher_raises_only_the_upper_bound():
    logp = torch.tensor([[LOG(1.5), LOG(0.5)]])
    loss, _ = clipped_surrogate(
        logp, torch.zeros(1, 2), torch.tensor([1.0, 1.0]).view(1, 2), 0.2, 0.28
    )
    torch.testing.assert_close(loss, torch.tensor([[-1.28, -0.5]]))


def test_sequence_advantages_broadcast_over_tokens():
    loss, _ = clipped_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(loss, torch.tensor([[-2.0] * 3, [1.0] * 3]))


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[LOG(0.5)]]), torch.tensor([[LOG(0.25)]])
    # r = ref/p = 0.5
    torch.testing.assert_close(kl_estimate("k1", logp, ref), torch.tensor([[LOG(2)]]))
    torch.testing.assert_close(kl_estimate("k2", logp, ref), torch.tensor([[0.5 * LOG(2) ** 2]]))
    torch.testing.assert_close(kl_estimate("k3", logp, ref), torch.tensor([[0.5 + LOG(2) - 1]]))
    assert kl_estimate("k3", logp, logp).item() == 0.0
    with pytest.raises(ValueError):
        kl_estimate("k4", logp, ref)


def test_k3_is_an_unbiased_kl_estimate():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=gen), 0)
    q = torch.softmax(torch.randn(6, generator=gen), 0)
    exact = (p * (p.log() - q.log())).sum()
    idx = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    est = kl_estimate("k3", p.log()[idx], q.log()[idx]).mean()
    assert abs(est - exact) < 0.01


LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_aggregations_by_hand():
    assert aggregate("token_mean", LOSS, MASK, 3, 2).item() == pytest.approx(7 / 3)
    assert aggregate("seq_mean_token_mean", LOSS, MASK, 3, 2).item() == pytest.approx((1.5 + 4) / 2)
    with pytest.raises(ValueError):
        aggregate("sum", LOSS, MASK, 3, 2)


@pytest.mark.parametrize("name", ["token_mean", "seq_mean_token_mean"])
def test_aggregation_sums_over_micro_batches(name):
    whole = aggregate(name, LOSS, MASK, 3, 2)
    split = aggregate(name, LOSS[:1], MASK[:1], 3, 2) + aggregate(name, LOSS[1:], MASK[1:], 3, 2)
    torch.testing.assert_close(whole, split)


def test_sft_loss_is_token_mean_of_nll():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    assert sft_loss(logp, MASK, 3).item() == pytest.approx(2.0)


def test_token_logprobs_and_entropy_match_full_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 11, generator=gen)
    targets = torch.randint(0, 11, (5, 4), generator=gen)
    full = torch.log_softmax(logits / 0.7, -1)
    expected = full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    for chunk in (1, 2, 8):
        torch.testing.assert_close(token_logprobs(logits, targets, 0.7, chunk_rows=chunk), expected)
    torch.testing.assert_close(
        token_entropy(logits, 0.7, chunk_rows=2), -(full.exp() * full).sum(-1)
    )
