"""PPO's critic checkpoint: written as DCP (``critic_state/``) plus the HF export (``critic/``),
and read back; a checkpoint from before DCP (``critic_optimizer.pt``) still resumes."""

import torch

from reasonrl.config import load_config
from reasonrl.distributed import Ranks
from reasonrl.models.loading import save_torch
from reasonrl.models.value import ValueModel
from reasonrl.rollout import Rollout
from reasonrl.train.critic import CRITIC_DIR, CRITIC_OPTIMIZER, CRITIC_STATE, Critic


def _critic(tiny_qwen) -> Critic:
    cfg = load_config(None, ["algo.name=ppo"])
    return Critic(ValueModel(tiny_qwen.get_decoder(), 16), cfg, Ranks())


def _trained(tiny_qwen) -> Critic:
    critic = _critic(tiny_qwen)
    ids = torch.randint(3, 32, (4, 6), generator=torch.Generator().manual_seed(0))
    ro = Rollout(
        ids[:, :3], torch.ones(4, 3, dtype=torch.long), ids[:, 3:], torch.ones(4, 3),
        torch.zeros(4, 3), [""] * 4, torch.ones(4, dtype=torch.bool),
    )  # fmt: skip
    critic.update(ro, torch.zeros(4, 3), torch.ones(4, 3), torch.ones(4, 3), 12, 4)
    return critic


def test_a_critic_checkpoint_restores_weights_and_optimizer(tiny_qwen, tmp_path):
    critic = _trained(tiny_qwen)
    critic.save(tmp_path)
    assert (tmp_path / CRITIC_STATE).is_dir() and (tmp_path / CRITIC_DIR).is_dir()
    torch.manual_seed(1)
    fresh = _critic(type(tiny_qwen)(tiny_qwen.config))
    fresh.load(tmp_path)
    for (name, got), want in zip(
        fresh.model.state_dict().items(), critic.model.state_dict().values(), strict=True
    ):
        assert torch.equal(got, want), name
    want_state = critic.optimizer.state_dict()["state"]
    got_state = fresh.optimizer.state_dict()["state"]
    assert want_state and got_state.keys() == want_state.keys()
    for k, v in want_state.items():
        assert torch.equal(got_state[k]["exp_avg"], v["exp_avg"])
    exported = ValueModel.from_pretrained(str(tmp_path / CRITIC_DIR))
    assert torch.equal(exported.head.weight, critic.model.head.weight)


def test_a_checkpoint_from_before_dcp_resumes_its_optimizer(tiny_qwen, tmp_path):
    critic = _trained(tiny_qwen)
    critic.model.save_pretrained(tmp_path / CRITIC_DIR)
    save_torch(critic.optimizer.state_dict(), tmp_path / CRITIC_OPTIMIZER)
    fresh = _critic(tiny_qwen)
    fresh.load(tmp_path)
    got = fresh.optimizer.state_dict()["state"]
    assert got and torch.equal(
        got[0]["exp_avg"], critic.optimizer.state_dict()["state"][0]["exp_avg"]
    )
