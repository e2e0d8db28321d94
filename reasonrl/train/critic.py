"""PPO's critic as one object: the value model, its optimizer, its files in a checkpoint, its
values of a rollout and its update on a mini-batch. The policy's code sees only those calls.

The model comes wrapped by the caller like the policy (``reasonrl.distributed.wrap_model``: DDP,
FSDP2, or the model itself in one process); its losses are normalised by the mini-batch's totals
over every rank, so the summed gradients are one process's.

A checkpoint holds the critic twice: ``critic_state/``, its weights and AdamW state as a DCP
checkpoint (``save_train_state``: every rank writes its shards, and it resumes on any number of
ranks), read back by :meth:`Critic.load`; and ``critic/``, the whole ValueModel in HF format
(written by rank 0), from which ``train/run.py`` builds the critic on resume (``CRITIC_DIR``) and
which any later stage can load. A checkpoint from before ``critic_state/`` holds the optimizer
as ``critic_optimizer.pt``: :meth:`Critic.load` reads that in one process.
"""

from __future__ import annotations

from pathlib import Path

import torch

from reasonrl.algos import aggregate, value_loss
from reasonrl.config import ConfigError, RunConfig
from reasonrl.distributed import (
    Ranks,
    full_model_state,
    gradient_sync,
    load_train_state,
    save_train_state,
    unwrap,
)
from reasonrl.models.value import completion_values
from reasonrl.rollout.base import Rollout
from reasonrl.train.optim import build_optimizer

CRITIC_DIR, CRITIC_STATE, CRITIC_OPTIMIZER = "critic", "critic_state", "critic_optimizer.pt"


class Critic:
    """A ValueModel (wrapped for the ranks) trained on the returns of the policy's advantage
    estimator (GAE)."""

    def __init__(self, model: torch.nn.Module, cfg: RunConfig, ranks: Ranks) -> None:
        r, algo = cfg.rl, cfg.algo
        self.model, self.ranks = model, ranks
        self.optimizer = build_optimizer(
            model.parameters(), algo.critic_learning_rate, r.weight_decay, r.adam_betas
        )
        self.micro, self.pack_tokens = r.micro_batch_completions, cfg.model.pack_tokens
        self.value_clip, self.max_grad_norm = algo.value_clip, r.max_grad_norm

    def save(self, checkpoint: Path) -> None:
        """Write the critic and its optimizer into the policy's ``checkpoint`` directory. Every
        rank calls it, with the same directory (the DCP write and the gather are collective)."""
        save_train_state(checkpoint / CRITIC_STATE, self.model, self.optimizer)
        state = full_model_state(self.model, self.ranks)
        if self.ranks.is_main:
            unwrap(self.model).save_pretrained(checkpoint / CRITIC_DIR, state_dict=state)

    def load(self, checkpoint: Path) -> None:
        """Restore the critic's weights and optimizer from a checkpoint (every rank calls it)."""
        if (checkpoint / CRITIC_STATE).is_dir():
            load_train_state(checkpoint / CRITIC_STATE, self.model, self.optimizer)
        elif self.ranks.world_size == 1:  # older checkpoints: the weights came from critic/
            self.optimizer.load_state_dict(torch.load(checkpoint / CRITIC_OPTIMIZER))
        else:
            raise ConfigError(
                f"{checkpoint} holds the critic's optimizer as {CRITIC_OPTIMIZER} (an older "
                "checkpoint): resume it on one process"
            )

    def _values(self, ro: Rollout) -> torch.Tensor:
        # through the wrapper's forward (DDP reduces only the gradients of its own forward)
        c = ro.completion_ids.shape[1]
        return completion_values(
            self.model, ro.input_ids, ro.attention_mask, c, self.pack_tokens, self.ranks
        )

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
        token mean over its ``tokens`` loss tokens (``seqs`` sequences; both over every rank),
        accumulated over micro-batches. old_values, returns, mask: [b, C] (this rank's rows).
        Returns this rank's share of the mini-batch's value loss."""
        total = 0.0
        starts = range(0, len(mini), self.micro)
        for m in starts:
            rows = slice(m, m + self.micro)
            with gradient_sync(self.model, sync=m == starts[-1]):
                values = self._values(mini.select(rows))
                per_token, _ = value_loss(values, old_values[rows], returns[rows], self.value_clip)
                loss = aggregate("token_mean", per_token, mask[rows], tokens, seqs)
                loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total
