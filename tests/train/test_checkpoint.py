"""Checkpoint layout: the HF model, the optimizer in DCP ``train_state/``; the earlier layout
(optimizer in trainer_state.pt) still resumes."""

import torch

from reasonrl.models.loading import save_torch
from reasonrl.train.checkpoint import (
    DCP_DIR,
    STATE_FILE,
    load_trainer_state,
    rng_state,
    save_checkpoint,
)
from reasonrl.train.optim import build_optimizer, warmup_cosine


class _Saved(torch.nn.Linear):
    def save_pretrained(self, path, state_dict=None):  # what save_checkpoint asks of a model
        torch.save(self.state_dict() if state_dict is None else state_dict, path / "w.pt")


def _trained(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(seed)
    model = _Saved(3, 2)
    opt = build_optimizer(model.parameters(), 0.1, 0.0)
    sched = warmup_cosine(opt, 0, 10, 0.1)
    for _ in range(2):
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def _same(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    got, want = a.state_dict()["state"], b.state_dict()["state"]
    assert len(got) == len(want) == 2
    for sa, sb in zip(got.values(), want.values(), strict=True):
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=0, atol=0)


class _Tok:
    def save_pretrained(self, path):
        (path / "tok").write_text("")


def test_a_checkpoint_restores_optimizer_and_schedule(tmp_path):
    model, opt, sched = _trained(0)
    path = save_checkpoint(tmp_path, 2, model, _Tok(), opt, sched, extra={"x": 1})
    assert (path / DCP_DIR).is_dir() and "optimizer" not in torch.load(
        path / STATE_FILE, weights_only=False
    )
    fresh, fresh_opt, fresh_sched = _trained(1)
    assert load_trainer_state(path, fresh, fresh_opt, fresh_sched) == (2, {"x": 1})
    saved = torch.load(path / "w.pt")  # the weights: once, in the model's own files
    torch.testing.assert_close(saved["weight"], model.weight, rtol=0, atol=0)
    _same(fresh_opt, opt)
    assert fresh_sched.get_last_lr() == sched.get_last_lr()


def test_a_checkpoint_of_the_earlier_layout_still_resumes(tmp_path):
    model, opt, sched = _trained(0)
    state = {"step": 2, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    save_torch({**state, "rng": rng_state(), "extra": {}}, tmp_path / STATE_FILE)
    _, fresh_opt, fresh_sched = _trained(1)
    assert load_trainer_state(tmp_path, model, fresh_opt, fresh_sched) == (2, {})
    _same(fresh_opt, opt)
