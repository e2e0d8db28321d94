import torch

from reasonrl.rollout.base import Rollout, concat_rollouts


def _rollout(c: int, model_mask: list[list[int]] | None) -> Rollout:
    present = torch.ones(1, c, dtype=torch.long)
    mm = None if model_mask is None else torch.tensor(model_mask)
    return Rollout(
        torch.ones(1, 2, dtype=torch.long),
        torch.ones(1, 2, dtype=torch.long),
        torch.full((1, c), 5),
        present,
        torch.zeros(1, c),
        ["x"],
        torch.ones(1, dtype=torch.bool),
        mm,
    )


def test_the_model_mask_defaults_to_the_completion_mask_and_travels_with_the_rows():
    single, episode = _rollout(2, None), _rollout(4, [[1, 0, 0, 1]])
    assert torch.equal(single.model_mask, single.completion_mask)
    both = concat_rollouts([single, episode], pad_id=0)
    assert both.model_mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 1]]
    assert both.completion_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert both.lengths.tolist() == [2, 2]  # the model's tokens, not the environment's
    assert both.select([1]).model_mask.tolist() == [[1, 0, 0, 1]]
    assert both.to(torch.device("cpu")).model_mask.tolist() == both.model_mask.tolist()
