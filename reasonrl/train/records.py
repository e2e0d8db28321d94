"""The typed records an RL step passes between its phases (``train/rl.py``), changed only with
``dataclasses.replace``. B completions = P prompts × G completions each, C completion tokens."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from reasonrl.algos import kl_estimate
from reasonrl.rollout.base import Rollout, concat_rollouts
from reasonrl.tasks.base import Sample


@dataclass(frozen=True)
class ScoredBatch:
    """``collect`` and ``score``: completions grouped by prompt (G consecutive rows each) and
    their rewards."""

    rollout: Rollout
    samples: list[Sample]
    rewards: torch.Tensor  # [P, G] weighted total, NaN where a component could not be computed
    components: dict[str, list[float]]  # each reward component per completion [B]
    uncomputed: dict[str, list[bool]]  # per component, whose score could not be computed [B]
    rounds: int = 1  # generation rounds used (more than 1 only with dynamic sampling)
    staleness: int = 0  # updates between the weights that generated it and the trainer's
    dropped: int = 0  # kept groups left out so that the ranks split them evenly (train/collect.py)

    def groups(self, keep: list[int]) -> ScoredBatch:
        """The groups (prompts) ``keep``, in that order."""
        g = self.rewards.shape[1]
        rows = [k * g + j for k in keep for j in range(g)]
        return replace(
            self,
            rollout=self.rollout.select(rows),
            samples=[self.samples[i] for i in rows],
            rewards=self.rewards[keep],
            components={name: [v[i] for i in rows] for name, v in self.components.items()},
            uncomputed={name: [v[i] for i in rows] for name, v in self.uncomputed.items()},
        )

    def to(self, device: torch.device) -> ScoredBatch:
        """The same groups with the rollout's tensors on ``device`` (the rewards stay)."""
        return replace(self, rollout=self.rollout.to(device))

    def sample_records(self, n: int, tokenizer: Any) -> list[dict[str, Any]]:
        """The first completion of each of the first ``n`` groups, as ``samples.jsonl`` logs
        it: the prompt as the model saw it (decoded from its tokens, chat template and special
        tokens included), the completion, the gold answer, the total reward and each component
        under ``rewards``, the token count of each part (``completion``: the model's tokens,
        ``environment``: an episode's tool answers), and whether the completion was cut; for
        an episode also its ``turns`` (role and text, in order), ``tool_calls`` and
        ``tool_errors``."""
        ro, group = self.rollout, self.rewards.shape[1]
        flat = self.rewards.flatten().tolist()
        records = []
        for i in range(0, len(self.samples), group)[:n]:
            prompt_ids = ro.prompt_ids[i][ro.prompt_mask[i].bool()].tolist()
            episode = {}
            if ro.episodes is not None:  # turn by turn: model, tool, model, ...
                e = ro.episodes[i]
                episode = {
                    "turns": [{"role": role, "text": text} for role, text in e.turns],
                    "tool_calls": e.calls,
                    "tool_errors": e.errors,
                }
            records.append(
                {
                    "prompt": tokenizer.decode(prompt_ids, skip_special_tokens=False),
                    "completion": ro.texts[i],
                    "gold_answer": self.samples[i].answer,
                    "reward": flat[i],
                    "rewards": {k: v[i] for k, v in self.components.items()},
                    "tokens": {
                        "prompt": len(prompt_ids),
                        "completion": int(ro.lengths[i]),
                        "environment": int(ro.completion_mask[i].sum() - ro.lengths[i]),
                    },
                    "truncated": not bool(ro.finished[i]),
                    **episode,
                }
            )
        return records


def concat_scored(parts: list[ScoredBatch], pad_id: int, rounds: int) -> ScoredBatch:
    """The groups of several generation rounds as one batch."""
    return ScoredBatch(
        concat_rollouts([p.rollout for p in parts], pad_id),
        [s for p in parts for s in p.samples],
        torch.cat([p.rewards for p in parts]),
        {name: [v for p in parts for v in p.components[name]] for name in parts[0].components},
        {name: [v for p in parts for v in p.uncomputed[name]] for name in parts[0].uncomputed},
        rounds,
        staleness=max(p.staleness for p in parts),
    )


@dataclass(frozen=True)
class LogProbs:
    """``logprobs``: what the models that do not train in the step say of its completions.
    Every tensor [B, C]."""

    sampling: torch.Tensor  # the sampling policy's: recomputed by the trainer, else the engine's
    old: torch.Tensor | None  # the ratio's denominator; None: one update, on-policy (detached)
    ref: torch.Tensor | None  # the frozen reference's; None without a KL term
    values: torch.Tensor | None  # the critic's V before each token; None without a critic
    # algo.tis_cap: each token's weight π_trainer / π_behaviour, truncated or masked at the cap,
    # and where it was (algos/mismatch.py)
    is_weight: torch.Tensor | None = None
    is_corrected: torch.Tensor | None = None
    recomputed: bool = False  # ``sampling`` is the trainer's own, not the engine's log-probs

    def kl(self, estimator: str, logp: torch.Tensor | None = None) -> torch.Tensor | None:
        """The per-token KL to the reference by ``estimator`` (k1 | k2 | k3): of ``logp`` (the
        current policy's, in the loss) or of the sampling policy (the reward penalty, the logged
        ``kl/mean``). The one place the KL of a step is estimated; None without a reference."""
        if self.ref is None:
            return None
        logp = self.sampling if logp is None else logp
        return kl_estimate(estimator, logp, self.ref.to(logp.dtype))

    def select(self, rows: slice | list[int]) -> LogProbs:
        """The rows ``rows`` (a mini- or micro-batch)."""
        return LogProbs(
            self.sampling[rows],
            None if self.old is None else self.old[rows],
            None if self.ref is None else self.ref[rows],
            None if self.values is None else self.values[rows],
            None if self.is_weight is None else self.is_weight[rows],
            None if self.is_corrected is None else self.is_corrected[rows],
            self.recomputed,
        )


@dataclass(frozen=True)
class Advantages:
    """``advantages``: what the update trains on. Every tensor [B, C]."""

    advantages: torch.Tensor  # 0 where ``mask`` is
    returns: torch.Tensor | None  # the critic's targets; None without a critic
    mask: torch.Tensor  # completion tokens that carry loss (float)


@dataclass(frozen=True)
class UpdateStats:
    """``update``: sums over the step's updates, made means in ``metrics`` (so that several
    ranks can add their sums and counts first)."""

    updates: int  # optimizer updates of the policy (and critic) in the step
    tokens: float  # loss tokens, counted once per epoch: the count of the two sums below
    entropy: float  # Σ over loss tokens of the policy's entropy
    clipped: float  # loss tokens whose ratio was clipped
    policy_loss: float | None  # Σ over updates of the mini-batch loss; None: critic warm-up
    value_loss: float | None  # the same for the critic; None without one
    grad_norm: float | None  # the policy's, before clipping, at the last update
