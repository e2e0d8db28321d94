"""The ``update`` phase of an RL step: ``algo.ppo_epochs`` passes over the step's completions in
mini-batches of ``rl.mini_batch_completions``, one optimizer update each, every mini-batch
accumulated over micro-batches of ``rl.micro_batch_completions``; the critic, when there is one,
takes an update on the same mini-batches."""

from __future__ import annotations

import math

import torch

from reasonrl.algos import (
    aggregate,
    clipped_surrogate,
    entropy_bonus,
    importance_ratio,
    kl_in_loss,
)
from reasonrl.config import RunConfig
from reasonrl.models.forward import completion_logprobs
from reasonrl.rollout.base import Rollout
from reasonrl.train.critic import Critic
from reasonrl.train.records import Advantages, LogProbs, UpdateStats


def updates_per_step(cfg: RunConfig, completions: int) -> int:
    """Optimizer updates a step of ``completions`` makes: epochs × mini-batches."""
    mini = min(cfg.rl.mini_batch_completions or completions, completions)
    return cfg.algo.ppo_epochs * math.ceil(completions / mini)


def loss_totals(mask: torch.Tensor, rows: list[int]) -> tuple[int, int]:
    """The loss tokens and sequences a mini-batch's losses are normalised by: the one place they
    are counted (with several ranks, the place to all-reduce them). mask: [B, C]."""
    return max(1, int(mask[rows].sum())), len(rows)


def update(
    cfg: RunConfig,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    critic: Critic | None,
    rollout: Rollout,
    lp: LogProbs,
    adv: Advantages,
    train_policy: bool,
) -> UpdateStats:
    """Train on the step's completions; ``train_policy`` False (PPO's critic warm-up) trains
    only the critic. The learning-rate schedule is the caller's: it steps once per RL step."""
    r, algo, b = cfg.rl, cfg.algo, len(rollout)
    mini, micro = min(r.mini_batch_completions or b, b), r.micro_batch_completions
    sums = {"policy": 0.0, "value": 0.0, "entropy": 0.0, "clipped": 0.0}
    grad_norm = None
    for _ in range(algo.ppo_epochs):
        order = torch.randperm(b).tolist() if algo.ppo_epochs > 1 else list(range(b))
        for m in range(0, b, mini):
            rows_mini = order[m : m + mini]
            tokens, seqs = loss_totals(adv.mask, rows_mini)
            if train_policy:
                for u in range(0, len(rows_mini), micro):
                    rows = rows_mini[u : u + micro]
                    loss, stats = policy_loss(
                        policy,
                        rollout.select(rows),
                        adv.mask[rows],
                        adv.advantages[rows],
                        lp.select(rows),
                        cfg,
                        tokens,
                        seqs,
                    )
                    loss.backward()
                    for key, value in stats.items():
                        sums[key] += value
                grad_norm = float(
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), r.max_grad_norm)
                )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if critic is not None:
                if lp.values is None or adv.returns is None:
                    raise ValueError(
                        f"algo.name=ppo trains a critic on the returns of its advantage "
                        f"estimator; algo.advantage={algo.advantage} gives none"
                    )
                sums["value"] += critic.update(
                    rollout.select(rows_mini),
                    lp.values[rows_mini],
                    adv.returns[rows_mini],
                    adv.mask[rows_mini],
                    tokens,
                    seqs,
                )
    return UpdateStats(
        updates=updates_per_step(cfg, b),
        tokens=max(1.0, float(adv.mask.sum())) * algo.ppo_epochs,
        entropy=sums["entropy"],
        clipped=sums["clipped"],
        policy_loss=sums["policy"] if train_policy else None,
        value_loss=sums["value"] if critic is not None else None,
        grad_norm=grad_norm,
    )


def policy_loss(
    policy: torch.nn.Module,
    mb: Rollout,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    lp: LogProbs,
    cfg: RunConfig,
    mini_tokens: int,
    mini_seqs: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy loss of one micro-batch, scaled so that summing it over a mini-batch's
    micro-batches gives the loss of the whole mini-batch (``mini_tokens``/``mini_seqs`` are the
    mini-batch's totals of loss tokens and sequences, from :func:`loss_totals`).

    mask, advantages: [b, C]; ``lp``: the micro-batch's rows (``lp.old`` None means on-policy:
    the current log-probs, detached). Returns (loss, its value and the entropy and clipped-token
    sums over the micro-batch's loss tokens: keys policy, entropy, clipped).
    """
    algo, c = cfg.algo, mb.completion_ids.shape[1]
    logp, entropy = completion_logprobs(
        policy,
        mb.input_ids,
        mb.attention_mask,
        c,
        cfg.rollout.temperature,
        with_entropy=True,
        pack_tokens=cfg.model.pack_tokens,
        entropy_grad=bool(algo.entropy_coef),
    )
    mask, advantages = mask.to(logp.dtype), advantages.to(logp.dtype)
    old = logp.detach() if lp.old is None else lp.old.to(logp.dtype)
    per_token, clipped = clipped_surrogate(
        logp,
        old,
        advantages,
        algo.clip_eps_low,
        algo.clip_eps_high,
        mask=mask,
        ratio_level=algo.ratio,
        dual_clip=algo.dual_clip,
        log_ratio_clamp=algo.log_ratio_clamp,
    )
    kl = lp.kl(algo.kl, logp) if algo.kl_in == "loss" and algo.beta > 0 else None
    if kl is not None:
        ratio = (
            importance_ratio(logp, old, mask, algo.ratio, algo.log_ratio_clamp)
            if algo.kl_ratio_weighted
            else None
        )
        per_token = per_token + kl_in_loss(kl, algo.beta, ratio)
    if algo.entropy_coef:
        per_token = per_token + entropy_bonus(entropy, algo.entropy_coef)
    norm_len = cfg.rollout.max_new_tokens
    loss = aggregate(algo.aggregation, per_token, mask, mini_tokens, mini_seqs, norm_len)
    return loss, {
        "policy": loss.item(),
        "entropy": float((entropy * mask).sum()),
        "clipped": float((clipped.to(mask.dtype) * mask).sum()),
    }
