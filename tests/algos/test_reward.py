import math

import torch

from reasonrl.algos import bradley_terry_loss


def test_bradley_terry_by_hand():
    chosen = torch.tensor([2.0, 0.0, -1.0])
    rejected = torch.tensor([0.0, 0.0, 1.0])
    # gaps 2, 0, -2: −log σ(2) = log(1 + e^-2), −log σ(0) = log 2, −log σ(-2) = log(1 + e^2)
    expected = (math.log(1 + math.exp(-2)) + math.log(2) + math.log(1 + math.exp(2))) / 3
    assert math.isclose(bradley_terry_loss(chosen, rejected).item(), expected, rel_tol=1e-6)


def test_margin_shifts_the_gap():
    chosen, rejected = torch.tensor([3.0]), torch.tensor([1.0])
    # gap 2 minus margin 2 is 0: the loss is log 2 however large the scores
    assert math.isclose(
        bradley_terry_loss(chosen, rejected, margin=2.0).item(), math.log(2), rel_tol=1e-6
    )
    assert bradley_terry_loss(chosen, rejected, 1.0) > bradley_terry_loss(chosen, rejected)


def test_stable_and_gradient_pushes_the_scores_apart():
    chosen = torch.tensor([-200.0, 200.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0], requires_grad=True)
    loss = bradley_terry_loss(chosen, rejected)
    assert math.isclose(loss.item(), 100.0, rel_tol=1e-6)  # (200 + ~0) / 2, not inf
    loss.backward()
    # d/dc of softplus(r − c) / B is −σ(r − c) / B: −1/2 for the wrong pair, ~0 for the right
    assert torch.allclose(chosen.grad, torch.tensor([-0.5, 0.0]), atol=1e-6)
    assert torch.allclose(rejected.grad, -chosen.grad)
