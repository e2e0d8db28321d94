"""PPO's critic as one object: the value model, its optimizer, its files in a checkpoint, its
values of a rollout and its update on a mini-batch. The policy's code sees only those calls.

A checkpoint holds the critic as ``critic/`` (``ValueModel.save_pretrained``) and its optimizer
as ``critic_optimizer.pt``; ``train/run.py`` loads the weights from ``CRITIC_DIR`` on resume.
"""

from __future__ import annotations

from pathlib import Path

import torch

from reasonrl.algos import aggregate, value_loss
from reasonrl.config import RunConfig
from reasonrl.models.loading import save_torch
from reasonrl.models.value import ValueModel
from reasonrl.rollout.base import Rollout
from reasonrl.train.optim import build_optimizer

CRITIC_DIR, CRITIC_OPTIMIZER = "critic", "critic_optimizer.pt"


class Critic:
    """A ValueModel trained on the returns of the policy's advantage estimator (GAE)."""

    def __init__(self, model: ValueModel, cfg: RunConfig) -> None:
        r, algo = cfg.rl, cfg.algo
        self.model = model
        self.optimizer = build_optimizer(
            model.parameters(), algo.critic_learning_rate, r.weight_decay, r.adam_betas
        )
        self.micro, self.pack_tokens = r.micro_batch_completions, cfg.model.pack_tokens
        self.value_clip, self.max_grad_norm = algo.value_clip, r.max_grad_norm

    def save(self, checkpoint: Path) -> None:
        """Write the critic and its optimizer into the policy's ``checkpoint`` directory."""
        self.model.save_pretrained(checkpoint / CRITIC_DIR)
        save_torch(self.optimizer.state_dict(), checkpoint / CRITIC_OPTIMIZER)

    def load_optimizer(self, checkpoint: Path) -> None:
        self.optimizer.load_state_dict(torch.load(checkpoint / CRITIC_OPTIMIZER))

    def _values(self, ro: Rollout) -> torch.Tensor:
        c = ro.completion_ids.shape[1]
        return self.model.completion_values(ro.input_ids, ro.attention_mask, c, self.pack_tokens)

    @torch.no_grad()
    def values(self, ro: Rollout) -> torch.Tensor:
        """V before each completion token: [B, C], micro-batch by micro-batch."""
        return torch.cat(
            [
                self._values(ro.select(slice(m, m + self.micro)))
                for m in range(0, len(ro), self.micro)
            ]
        )

    def update(
        self,
        mini: Rollout,
        old_values: torch.Tensor,
        returns: torch.Tensor,
        mask: torch.Tensor,
        tokens: int,
        seqs: int,
    ) -> float:
        """One optimizer step on a mini-batch: the clipped value loss (``algo.value_clip``) as a
        token mean over its ``tokens`` loss tokens (``seqs`` sequences), accumulated over
        micro-batches. old_values, returns, mask: [b, C]. Returns the mini-batch's value loss."""
        total = 0.0
        for m in range(0, len(mini), self.micro):
            rows = slice(m, m + self.micro)
            values = self._values(mini.select(rows))
            per_token, _ = value_loss(values, old_values[rows], returns[rows], self.value_clip)
            loss = aggregate("token_mean", per_token, mask[rows], tokens, seqs)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total
