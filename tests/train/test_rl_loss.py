import pytest
import torch

from reasonrl.algos import get_advantage
from reasonrl.config import load_config
from reasonrl.distributed import Ranks
from reasonrl.models.forward import completion_logprobs
from reasonrl.rollout import Rollout
from reasonrl.tasks.base import Sample
from reasonrl.train.records import LogProbs, ScoredBatch
from reasonrl.train.rl import advantages
from reasonrl.train.update import loss_totals, policy_loss


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


# A two-turn episode beside a one-turn completion: row 0 is the model's call (3 tokens), the
# environment's answer (3 tokens), the model's last turn (3 tokens, EOS last); row 1 is 4 model
# tokens and padding. Model tokens by hand: row 0 columns 0-2 and 6-8, row 1 columns 0-3.
EPISODE_MASK = [[1, 1, 1, 0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0, 0]]
MODEL_COLUMNS = [[0, 1, 2, 6, 7, 8], [0, 1, 2, 3]]


def _episode() -> Rollout:
    gen = torch.Generator().manual_seed(3)
    present = torch.tensor([[1] * 9, [1, 1, 1, 1, 0, 0, 0, 0, 0]])
    return Rollout(
        torch.randint(3, 32, (2, 3), generator=gen),
        torch.ones(2, 3, dtype=torch.long),
        torch.randint(3, 32, (2, 9), generator=gen) * present,
        present,
        torch.zeros(2, 9),
        ["", ""],
        torch.ones(2, dtype=torch.bool),
        model_mask=torch.tensor(EPISODE_MASK),
    )


@pytest.mark.parametrize(
    ("agg", "norm"),
    [
        # token_mean: the 10 model tokens, not the 13 present ones
        ("token_mean", lambda a: (6 * a[0] + 4 * a[1]) / 10),
        # each sequence's mean over its own model tokens (6 and 4)
        ("seq_mean_token_mean", lambda a: (6 * a[0] / 6 + 4 * a[1] / 4) / 2),
        # sums over model tokens ÷ (max_new_tokens = 9 × 2 sequences)
        ("seq_mean_token_sum_norm", lambda a: (6 * a[0] + 4 * a[1]) / 18),
    ],
)
def test_environment_tokens_get_no_gradient_and_leave_the_normalisation_alone(tiny_qwen, agg, norm):
    """The loss and gradients of a GRPO step on a two-turn episode equal a reference built by
    hand from the model tokens' log-probs alone; the environment tokens' recorded log-probs
    (garbage here) change nothing."""
    model = tiny_qwen.double()
    cfg = load_config(
        None,
        ["algo.name=grpo", f"algo.aggregation={agg}", "algo.beta=0", "rollout.max_new_tokens=9"],
    )
    ro = _episode()
    batch = ScoredBatch(ro, [Sample("q", "a")] * 2, torch.tensor([[1.0, 0.0]]), {}, {})
    old = torch.zeros(2, 9, dtype=torch.float64)
    adv = advantages(batch, LogProbs(old, None, None, None), cfg.algo, get_advantage("grpo"))
    torch.testing.assert_close(adv.mask, torch.tensor(EPISODE_MASK, dtype=torch.float32))
    assert not adv.advantages[0, 3:6].any()  # no advantage on the environment's tokens
    a = adv.advantages[:, 0].double()
    tokens, seqs = loss_totals(adv.mask, [0, 1], Ranks())
    assert tokens == 10

    def loss_and_grads(old_logp: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # two updates' worth of old log-probs: the ratio is then π/π_old, not the on-policy 1
        model.zero_grad()
        lp = LogProbs(old_logp, old_logp, None, None)
        loss, _ = policy_loss(model, ro, adv.mask, adv.advantages, lp, cfg, tokens, seqs)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    # π_old = π on model tokens (ratio 1, unclipped); garbage on the environment's
    with torch.no_grad():
        logp, _ = completion_logprobs(model, ro.input_ids, ro.attention_mask, 9)
    garbage = logp.clone()
    garbage[0, 3:6] = torch.tensor([-40.0, 7.0, 0.0], dtype=torch.float64)
    loss, grads = loss_and_grads(garbage)
    torch.testing.assert_close(loss, -norm(a).to(loss.dtype))

    # the reference: a plain forward, log-probs of the model's columns only, summed with the
    # aggregation's weights; the environment's tokens enter only as context
    model.zero_grad()
    am = ro.attention_mask
    logits = model(
        input_ids=ro.input_ids, attention_mask=am, position_ids=(am.cumsum(-1) - 1).clamp(min=0)
    ).logits[:, -10:-1]
    token_logp = torch.log_softmax(logits, -1).gather(-1, ro.completion_ids.unsqueeze(-1))[..., 0]
    weight = {"token_mean": [1 / 10, 1 / 10], "seq_mean_token_mean": [1 / 12, 1 / 8]}.get(
        agg, [1 / 18, 1 / 18]
    )
    reference = -sum(
        a[i] * weight[i] * token_logp[i, cols].sum() for i, cols in enumerate(MODEL_COLUMNS)
    )
    reference.backward()
    assert any(g.abs().sum() > 0 for g in grads)
    for got, want in zip(grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want)
    # the same episode with other old log-probs on its environment tokens: the same step
    garbage[0, 3:6] = 3.0
    loss2, grads2 = loss_and_grads(garbage)
    assert torch.equal(loss, loss2)
    assert all(torch.equal(g, h) for g, h in zip(grads, grads2, strict=True))
