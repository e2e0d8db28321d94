import math
from typing import get_args

import pytest
import torch

from reasonrl.algos import TIS_MODES, mismatch_weights
from reasonrl.config import AlgoConfig

# two rows; the second's last token is padding. log π_trainer − log μ per token:
#   row 0: +0.5, −0.2, +1.5      row 1: +0.1, +0.3, (pad)
TRAINER = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]], dtype=torch.float64)
BEHAVIOUR = torch.tensor([[-1.5, -1.8, -2.0], [-1.1, -1.3, 0.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
CAP = 2.0  # log 2 ≈ 0.693: only row 0's third token, and row 0 as a whole (sum 1.8), exceed it


def test_the_config_offers_exactly_the_modes_the_function_knows():
    assert set(get_args(AlgoConfig.model_fields["tis_mode"].annotation)) == set(TIS_MODES)


def test_token_truncate_caps_each_token_s_ratio():
    w, over = mismatch_weights(TRAINER, BEHAVIOUR, MASK, CAP, "token_truncate")
    e = math.exp
    torch.testing.assert_close(
        w, torch.tensor([[e(0.5), e(-0.2), CAP], [e(0.1), e(0.3), 1.0]], dtype=torch.float64)
    )
    assert over.tolist() == [[False, False, True], [False, False, False]]


def test_token_mask_drops_the_tokens_over_the_cap_and_keeps_the_others_ratios():
    w, over = mismatch_weights(TRAINER, BEHAVIOUR, MASK, CAP, "token_mask")
    e = math.exp
    torch.testing.assert_close(
        w, torch.tensor([[e(0.5), e(-0.2), 0.0], [e(0.1), e(0.3), 1.0]], dtype=torch.float64)
    )
    assert over.tolist() == [[False, False, True], [False, False, False]]


@pytest.mark.parametrize("mode", ["sequence_truncate", "sequence_mask"])
def test_a_sequence_mode_weights_every_token_by_the_product_of_the_row_s_ratios(mode):
    w, over = mismatch_weights(TRAINER, BEHAVIOUR, MASK, CAP, mode)
    row0 = CAP if mode == "sequence_truncate" else 0.0  # exp(1.8) ≈ 6.05 > 2
    row1 = math.exp(0.4)  # the padding token's −9 − 0 does not count
    torch.testing.assert_close(w[0], torch.full((3,), row0, dtype=torch.float64))
    torch.testing.assert_close(w[1, :2], torch.full((2,), row1, dtype=torch.float64))
    assert over.tolist() == [[True, True, True], [False, False, False]]


def test_a_huge_sequence_ratio_does_not_overflow():
    trainer = torch.zeros(1, 200, dtype=torch.float32)
    behaviour = torch.full((1, 200), -5.0)  # the row's log-ratio is 1000: exp overflows float32
    w, _ = mismatch_weights(trainer, behaviour, torch.ones(1, 200), CAP, "sequence_truncate")
    assert torch.isfinite(w).all() and torch.allclose(w, torch.full_like(w, CAP))


def test_no_gradient_flows_through_the_weights():
    trainer = TRAINER.clone().requires_grad_()
    w, _ = mismatch_weights(trainer, BEHAVIOUR, MASK, CAP, "token_truncate")
    assert not w.requires_grad


def test_an_unknown_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="choose from"):
        mismatch_weights(TRAINER, BEHAVIOUR, MASK, CAP, "tokens")
