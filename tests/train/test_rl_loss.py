import pytest
import torch

from reasonrl.config import load_config
from reasonrl.models.forward import completion_logprobs
from reasonrl.rollout import Rollout
from reasonrl.train.records import LogProbs
from reasonrl.train.update import policy_loss


def _rollout(b: int, p: int, c: int) -> Rollout:
    gen = torch.Generator().manual_seed(1)
    prompt_mask = torch.ones(b, p, dtype=torch.long)
    prompt_mask[::2, :2] = 0  # left padding on every other row
    completion_mask = torch.ones(b, c, dtype=torch.long)
    for i in range(b):
        completion_mask[i, 1 + i % c :] = 0  # ragged lengths
    return Rollout(
        torch.randint(3, 32, (b, p), generator=gen) * prompt_mask,
        prompt_mask,
        torch.randint(3, 32, (b, c), generator=gen),
        completion_mask,
        torch.zeros(b, c),
        [""] * b,
        torch.ones(b, dtype=torch.bool),
    )


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_gradient_accumulation_invariance(tiny_qwen, agg):
    """1 micro-batch of 8 and 8 micro-batches of 1 give the same gradient (fp64)."""
    model = tiny_qwen.double()
    cfg = load_config(None, [f"algo.aggregation={agg}", "algo.beta=0.1", "rollout.temperature=0.8"])
    ro = _rollout(8, 5, 6)
    adv = torch.linspace(-1, 1, 8, dtype=torch.float64)
    ref = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) - 3
    tokens = int(ro.completion_mask.sum())

    def grads(micro: int) -> list[torch.Tensor]:
        model.zero_grad()
        for m in range(0, 8, micro):
            rows = slice(m, m + micro)
            mb = ro.select(rows)
            mask = mb.completion_mask.double()
            lp = LogProbs(mb.logprobs, None, ref[rows], None)
            loss, _ = policy_loss(
                model, mb, mask, adv[rows, None].expand(-1, 6), lp, cfg, tokens, 8
            )
            loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(8), grads(1), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_loss_value_matches_the_formula(tiny_qwen):
    model = tiny_qwen.double()
    cfg = load_config(None, ["algo.beta=0.5", "algo.aggregation=token_mean"])
    ro = _rollout(4, 3, 4)
    adv = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    ref = torch.full((4, 4), -2.0, dtype=torch.float64)
    tokens = int(ro.completion_mask.sum())
    mask = ro.completion_mask.double()
    lp = LogProbs(ro.logprobs, None, ref, None)
    loss, _ = policy_loss(model, ro, mask, adv[:, None].expand(-1, 4), lp, cfg, tokens, 4)
    logp, _ = completion_logprobs(model, ro.input_ids, ro.attention_mask, 4)
    # ratio is 1, so the policy term is −A per token; k3 with the reference on top
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    expected = ((-adv[:, None] + 0.5 * kl) * mask).sum() / tokens
    torch.testing.assert_close(loss, expected.detach())


def test_the_entropy_bonus_has_the_entropy_gradient(tiny_qwen):
    # zero advantages and no KL: the loss is -coef x the token mean of the entropy, and its
    # gradient is that of the entropy computed straight from the model's logits
    model = tiny_qwen.double()
    cfg = load_config(None, ["algo.beta=0", "algo.entropy_coef=0.5", "algo.aggregation=token_mean"])
    ro = _rollout(4, 3, 4)
    mask = ro.completion_mask.double()
    tokens = int(mask.sum())
    zeros = torch.zeros(4, 4, dtype=torch.float64)
    model.zero_grad()
    loss, _ = policy_loss(
        model, ro, mask, zeros, LogProbs(ro.logprobs, None, None, None), cfg, tokens, 4
    )
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(
        input_ids=ro.input_ids,
        attention_mask=ro.attention_mask,
        position_ids=(ro.attention_mask.cumsum(-1) - 1).clamp(min=0),
    ).logits[:, -5:-1]
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    expected = -0.5 * (entropy * mask).sum() / tokens
    torch.testing.assert_close(loss, expected.detach())
    expected.backward()
    assert any(g.abs().sum() > 0 for g in got)
    for a, b in zip(got, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b)
