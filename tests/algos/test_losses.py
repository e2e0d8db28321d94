import math

import pytest
import torch

from reasonrl.algos import (
    AGGREGATIONS,
    aggregate,
    clipped_surrogate,
    entropy_bonus,
    importance_ratio,
    kl_estimate,
    kl_in_loss,
    kl_in_reward,
    sft_loss,
    token_entropy,
    token_logprobs,
    value_loss,
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


def test_dual_clip_by_hand():
    # A < 0, ratio 4: PPO's loss is max(4, 1.2) = 4, dual-clip caps it at c·|A| = 3.
    # ratio 2, A < 0: 2 < 3, unchanged. ratio 4, A > 0: −1.2, dual-clip does not apply.
    logp = torch.tensor([[LOG(4.0), LOG(2.0), LOG(4.0)]])
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 3), adv, dual_clip=3.0)
    torch.testing.assert_close(loss, torch.tensor([[3.0, 2.0, -1.2]]))
    assert clipped.tolist() == [[True, False, True]]
    with pytest.raises(ValueError):
        clipped_surrogate(logp, torch.zeros(1, 3), adv, dual_clip=1.0)


def test_log_ratio_clamp_keeps_the_ratio_finite():
    # log-ratio 100 overflows float32's exp; clamped to 20 the loss is e^20·|A|
    logp, old, adv = torch.tensor([[100.0]]), torch.zeros(1, 1), torch.tensor([-1.0])
    assert torch.isinf(clipped_surrogate(logp, old, adv)[0]).all()
    loss, _ = clipped_surrogate(logp, old, adv, log_ratio_clamp=20.0)
    torch.testing.assert_close(loss, torch.tensor([[math.exp(20.0)]]))


def test_gspo_sequence_ratio_by_hand():
    # log-ratios ln 4 and 0 on the two valid tokens (the padded third is ignored):
    # s = exp((ln 4 + 0) / 2) = 2, the same at every token. ε = 0.2:
    # A = +1 → −min(2, 1.2) = −1.2;  A = −1 → −min(−2, −1.2) = 2
    logp = torch.tensor([[LOG(4.0), 0.0, 7.0], [LOG(4.0), 0.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    ratio = importance_ratio(logp, torch.zeros(2, 3), mask, "sequence")
    torch.testing.assert_close(ratio, torch.tensor([[2.0], [2.0]]))
    loss, clipped = clipped_surrogate(
        logp, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), mask=mask, ratio_level="sequence"
    )
    torch.testing.assert_close(loss, torch.tensor([[-1.2] * 3, [2.0] * 3]))
    assert clipped.tolist() == [[True] * 3, [False] * 3]


@pytest.mark.parametrize(
    ("level", "grad"),
    [
        # Σ_t −s·A_t = −4s, ds/dlogp_j = s·m_j/2 = m_j → −4 on each valid token
        ("sequence", [[-4.0, -4.0, 0.0]]),
        # −s_t·A_t with ds_t/dlogp_t = s = 2 at token t only → −2·A_t
        ("sequence_token", [[-2.0, -6.0, 0.0]]),
    ],
)
def test_gspo_token_has_the_sequence_value_and_a_per_token_gradient(level, grad):
    logp = torch.tensor([[LOG(4.0), 0.0, 7.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.tensor([[1.0, 3.0, 5.0]])  # token-level advantages; ε wide: no clipping
    loss, _ = clipped_surrogate(
        logp, torch.zeros(1, 3), adv, 10.0, 10.0, mask=mask, ratio_level=level
    )
    torch.testing.assert_close(loss, torch.tensor([[-2.0, -6.0, -10.0]]))
    (loss * mask).sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor(grad))


def test_importance_ratio_errors():
    with pytest.raises(ValueError, match="mask"):
        importance_ratio(torch.zeros(1, 2), torch.zeros(1, 2), None, "sequence")
    with pytest.raises(ValueError, match="level"):
        importance_ratio(torch.zeros(1, 2), torch.zeros(1, 2), None, "word")


def test_kl_in_loss_by_hand():
    kl = torch.tensor([[0.5, 2.0]])
    torch.testing.assert_close(kl_in_loss(kl, 0.1), torch.tensor([[0.05, 0.2]]))
    # weighted by the importance ratio (TRL's use_bias_correction_kl)
    torch.testing.assert_close(
        kl_in_loss(kl, 0.1, torch.tensor([[2.0, 0.5]])), torch.tensor([[0.1, 0.1]])
    )


def test_kl_in_reward_by_hand():
    # outcome on the last valid token, −0.1·kl on every valid token
    rewards = kl_in_reward(
        torch.tensor([1.0, 0.0]),
        torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
        torch.tensor([[0.5, 1.0], [2.0, 9.0]]),
        beta=0.1,
    )
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.9], [-0.2, 0.0]]))
    # a hole before the end and an empty row; without KL only the outcome is placed
    rewards = kl_in_reward(
        torch.tensor([2.0, 3.0]), torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    )
    torch.testing.assert_close(rewards, torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0] * 4]))


def test_value_loss_by_hand():
    # V_old 1, ε 0.2 → V_clip = clip to [0.8, 1.2]
    # V 2, R 3: max((2−3)², (1.2−3)²) = 3.24 → ½ → 1.62 (clipped error larger)
    # V 1.5, R 1: max(0.25, (1.2−1)² = 0.04) = 0.25 → 0.125
    values, old = torch.tensor([[2.0, 1.5]]), torch.ones(1, 2)
    returns = torch.tensor([[3.0, 1.0]])
    loss, clipped = value_loss(values, old, returns, clip_eps=0.2)
    torch.testing.assert_close(loss, torch.tensor([[1.62, 0.125]]))
    assert clipped.tolist() == [[True, False]]
    loss, _ = value_loss(values, old, returns, clip_eps=None)
    torch.testing.assert_close(loss, torch.tensor([[0.5, 0.125]]))


def test_entropy_bonus_by_hand():
    torch.testing.assert_close(
        entropy_bonus(torch.tensor([[1.0, 2.0]]), 0.01), torch.tensor([[-0.01, -0.02]])
    )


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
    # valid losses 1, 2 | 4
    assert aggregate("token_mean", LOSS, MASK, 3, 2).item() == pytest.approx(7 / 3)
    assert aggregate("seq_mean_token_mean", LOSS, MASK, 3, 2).item() == pytest.approx((1.5 + 4) / 2)
    # Dr.GRPO: (1 + 2 + 4) / (norm_len 4 · 2 sequences)
    assert aggregate("seq_mean_token_sum_norm", LOSS, MASK, 3, 2, norm_len=4).item() == (
        pytest.approx(7 / 8)
    )
    with pytest.raises(ValueError, match="norm_len"):
        aggregate("seq_mean_token_sum_norm", LOSS, MASK, 3, 2)
    with pytest.raises(ValueError):
        aggregate("sum", LOSS, MASK, 3, 2)


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_aggregation_sums_over_micro_batches(name):
    whole = aggregate(name, LOSS, MASK, 3, 2, 3)
    split = aggregate(name, LOSS[:1], MASK[:1], 3, 2, 3) + aggregate(
        name, LOSS[1:], MASK[1:], 3, 2, 3
    )
    torch.testing.assert_close(whole, split)


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_gradient_accumulation_invariance(name, ratio_level):
    """1 micro-batch of 8 and 8 micro-batches of 1 (each cut to its own length, as a padded
    micro-batch would be) give the same loss and gradients: policy loss with clip-higher and
    dual-clip, KL in the loss, entropy bonus, clipped value loss."""
    gen = torch.Generator().manual_seed(0)
    b, t = 8, 6
    f64 = {"generator": gen, "dtype": torch.float64}
    lengths = [6, 1, 3, 5, 2, 6, 4, 3]
    mask = (torch.arange(t) < torch.tensor(lengths)[:, None]).double()
    logp = (-torch.rand(b, t, **f64)).requires_grad_()
    values = torch.randn(b, t, **f64).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(b, t, **f64)
    ref = logp.detach() + 0.3 * torch.randn(b, t, **f64)
    old_values, returns = torch.randn(b, t, **f64), torch.randn(b, t, **f64)
    adv, entropy = torch.randn(b, **f64), torch.rand(b, t, **f64)
    step_tokens, step_seqs = int(mask.sum()), b

    def loss_of(rows: slice, width: int) -> torch.Tensor:
        lp, m, o = logp[rows, :width], mask[rows, :width], old[rows, :width]
        pg, _ = clipped_surrogate(
            lp, o, adv[rows], 0.2, 0.28, mask=m, ratio_level=ratio_level, dual_clip=3.0
        )
        ratio = importance_ratio(lp, o, m, ratio_level)
        vl, _ = value_loss(values[rows, :width], old_values[rows, :width], returns[rows, :width])
        per_token = (
            pg
            + kl_in_loss(kl_estimate("k3", lp, ref[rows, :width]), 0.04, ratio)
            + entropy_bonus(entropy[rows, :width], 0.01)
            + vl
        )
        return aggregate(name, per_token, m, step_tokens, step_seqs, norm_len=t)

    whole = loss_of(slice(0, b), t)
    whole.backward()
    grads = logp.grad.clone(), values.grad.clone()
    logp.grad, values.grad = None, None
    total = torch.zeros((), dtype=torch.float64)
    for i in range(b):
        part = loss_of(slice(i, i + 1), lengths[i])
        part.backward()
        total += part.detach()
    torch.testing.assert_close(total, whole.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(logp.grad, grads[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(values.grad, grads[1], rtol=0, atol=1e-6)


def test_sft_loss_is_token_mean_of_nll():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    assert sft_loss(logp, MASK, 3).item() == pytest.approx(2.0)


def test_token_logprobs_and_entropy_match_full_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 11, generator=gen)
    targets = torch.randint(0, 11, (5, 4), generator=gen)
    full = torch.log_softmax(logits / 0.7, -1)
    expected = full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    for chunk in (1, 3, 7, 64):
        torch.testing.assert_close(
            token_logprobs(logits, targets, 0.7, chunk_tokens=chunk), expected
        )
    torch.testing.assert_close(
        token_entropy(logits, 0.7, chunk_tokens=3), -(full.exp() * full).sum(-1)
    )
