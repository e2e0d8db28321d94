"""DPO and IPO losses: worked by hand, and against TRL 1.16.0's DPOTrainer on a real model."""

import copy
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from reasonrl.algos import dpo_loss
from reasonrl.models.forward import completion_logprobs


def _t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_sigmoid_loss_by_hand():
    # Pair 1: Δ_chosen = −2 − (−3) = 1, Δ_rejected = −5 − (−4) = −1, β·margin = 0.5·2 = 1
    # → −log σ(1) = log(1 + e^−1). Pair 2: policy = reference → log 2, rewards 0.
    loss, chosen, rejected = dpo_loss(
        _t(-2.0, -7.0), _t(-5.0, -1.0), _t(-3.0, -7.0), _t(-4.0, -1.0), beta=0.5
    )
    torch.testing.assert_close(loss, _t(math.log(1 + math.exp(-1)), math.log(2)))
    torch.testing.assert_close(chosen, _t(0.5, 0.0))
    torch.testing.assert_close(rejected, _t(-0.5, 0.0))


def test_ipo_loss_averages_each_log_ratio_over_its_tokens():
    # Δ_chosen = 1 over 2 tokens → 0.5; Δ_rejected = −1 over 4 tokens → −0.25; 1/(2β) = 1
    # → (0.75 − 1)² = 0.0625. At the reference (Δ = 0) the loss is (1/(2β))² = 1.
    loss, chosen, rejected = dpo_loss(
        _t(-2.0, -3.0),
        _t(-5.0, -3.0),
        _t(-3.0, -3.0),
        _t(-4.0, -3.0),
        beta=0.5,
        loss_type="ipo",
        chosen_tokens=_t(2.0, 3.0),
        rejected_tokens=_t(4.0, 5.0),
    )
    torch.testing.assert_close(loss, _t(0.0625, 1.0))
    torch.testing.assert_close(chosen - rejected, _t(1.0, 0.0))  # rewards stay token sums


def test_sigmoid_gradient_pushes_chosen_up_and_rejected_down():
    pc = torch.tensor([-2.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, torch.tensor([-3.0]), torch.tensor([-4.0]), beta=0.5)
    loss.sum().backward()
    # d/dΔc of −log σ(β(Δc − Δr)) = −β·σ(−β·margin) = −0.5·σ(−1)
    expected = -0.5 / (1 + math.e)
    torch.testing.assert_close(pc.grad, torch.tensor([expected]))
    torch.testing.assert_close(pr.grad, torch.tensor([-expected]))


def test_unknown_loss_type_and_ipo_without_lengths_are_errors():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="choose from"):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="hinge")
    with pytest.raises(ValueError, match="tokens"):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="ipo")


# ---------------------------------------------------------------- agreement with TRL 1.16.0

pytest.importorskip("trl")  # a pinned test dependency (pyproject's test extra): a guard only

from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402
from trl.trainer.utils import add_fused_lm_head  # noqa: E402

BETA = 0.3
PROMPT = [[3, 4, 5], [6, 7, 8]]  # equal lengths: TRL passes no position ids, so no left padding
CHOSEN = [[9, 10, 1], [11, 1]]  # responses end in EOS (1)
REJECTED = [[12, 1], [13, 14, 15, 1]]


class _Accelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _trl_loss(model, ref, loss_type):
    """TRL's ``_compute_loss`` on its own batch layout: rows [chosen…, rejected…], each
    ``prompt | response right-padded``; completion_mask marks the response tokens."""
    responses = CHOSEN + REJECTED
    width = max(map(len, responses))
    rows = zip(PROMPT * 2, responses, strict=True)
    ids = torch.tensor([p + r + [0] * (width - len(r)) for p, r in rows])
    cmask = torch.tensor([[0] * 3 + [1] * len(r) + [0] * (width - len(r)) for r in responses])
    attn = torch.cat([torch.ones(4, 3, dtype=torch.long), cmask[:, 3:]], dim=1)
    trainer = SimpleNamespace(
        model=model,
        ref_model=ref,
        accelerator=_Accelerator(),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        aux_loss_enabled=False,
        precompute_ref_logps=False,
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=BETA,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {"input_ids": ids, "attention_mask": attn, "completion_mask": cmask}
    return DPOTrainer._compute_loss(trainer, model, inputs, False), ids, attn, cmask[:, 3:]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_agrees_with_trl_dpo_trainer(tiny_qwen, loss_type):
    policy = tiny_qwen
    ref = copy.deepcopy(policy)
    with torch.no_grad():  # the policy has moved away from the reference
        for p in policy.parameters():
            p.add_(0.2 * torch.randn_like(p))
    outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
    add_fused_lm_head(policy, outputs=outputs)
    add_fused_lm_head(ref, outputs=outputs)
    policy.train()
    trl_loss, ids, attn, cmask = _trl_loss(policy, ref, loss_type)

    def seq_logps(model):
        logp, _ = completion_logprobs(model, ids, attn, cmask.shape[1])
        return (logp * cmask).sum(-1).chunk(2)

    pc, pr = seq_logps(policy)
    with torch.no_grad():
        rc, rr = seq_logps(ref)
    nc, nr = cmask.sum(-1).float().chunk(2)
    ours, _, _ = dpo_loss(pc, pr, rc, rr, BETA, loss_type, nc, nr)
    at_ref, _, _ = dpo_loss(rc, rr, rc, rr, BETA, loss_type, nc, nr)
    assert abs(ours.mean().item() - at_ref.mean().item()) > 1e-2  # the policy has moved
    torch.testing.assert_close(ours.mean(), trl_loss, rtol=1e-5, atol=1e-6)
