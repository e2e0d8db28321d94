"""The ``update`` phase of an RL step: ``algo.ppo_epochs`` passes over the step's completions in
mini-batches of ``rl.mini_batch_completions``, one optimizer update each, every mini-batch
accumulated over micro-batches of ``rl.micro_batch_completions``; the critic, when there is one,
takes an update on the same mini-batches.

Several ranks (``reasonrl.distributed``): each holds a contiguous block of the step's rows. Row j
of the step goes to a mini-batch by a rule of j alone (``data.mini_batches``: strided, or with
``ppo_epochs`` > 1 dealt by a seeded permutation per block of rows), so one process's mini-batch
m is the union of every rank's; losses are normalised by the mini-batch's totals over all
ranks (``loss_totals``) and the wrapped model sums the ranks' gradients.
"""

from __future__ import annotations

import torch

from reasonrl.algos import (
    aggregate,
    clipped_surrogate,
    entropy_bonus,
    importance_ratio,
    kl_in_loss,
)
from reasonrl.config import ConfigError, RunConfig
from reasonrl.distributed import Ranks, all_reduce_sum, global_counts, gradient_sync, shard
from reasonrl.models.forward import completion_logprobs
from reasonrl.rollout.base import Rollout
from reasonrl.train.critic import Critic
from reasonrl.train.data import mini_batches
from reasonrl.train.records import Advantages, LogProbs, UpdateStats


def mini_batch_count(cfg: RunConfig, completions: int) -> int:
    """Mini-batches per epoch of a step of ``completions`` (over every rank)."""
    mini = min(cfg.rl.mini_batch_completions or completions, completions)
    return -(-completions // mini)


def updates_per_step(cfg: RunConfig, completions: int) -> int:
    """Optimizer updates a step of ``completions`` (over every rank) makes: epochs ×
    mini-batches."""
    return cfg.algo.ppo_epochs * mini_batch_count(cfg, completions)


def splits_evenly(cfg: RunConfig, groups: int, world_size: int) -> bool:
    """Whether a step of ``groups`` prompts gives every rank the same number of rows of every
    mini-batch (the same forwards and backwards, and one process's mini-batches): whole groups
    in equal blocks, each block a multiple of the mini-batch count. Always on one process."""
    total = groups * cfg.rl.completions_per_prompt
    if world_size == 1:
        return True
    return groups % world_size == 0 and (total // world_size) % mini_batch_count(cfg, total) == 0


def check_mini_batches(cfg: RunConfig, ranks: Ranks) -> None:
    """Every rank must hold the same number of rows of every mini-batch (``splits_evenly``):
    its completions a multiple of the mini-batch count. Raises ``ConfigError`` naming the sizes
    to change."""
    r, w = cfg.rl, ranks.world_size
    total = r.prompts_per_step * r.completions_per_prompt
    n_mini = mini_batch_count(cfg, total)
    per_rank = total // w
    if not splits_evenly(cfg, r.prompts_per_step, w):
        raise ConfigError(
            f"rl.mini_batch_completions={r.mini_batch_completions} makes {n_mini} mini-batches "
            f"of the step's {total} completions, which cannot be split evenly over {w} ranks "
            f"({per_rank} completions each); choose rl.prompts_per_step and "
            f"rl.mini_batch_completions so that {n_mini} divides prompts_per_step / {w} × "
            "completions_per_prompt"
        )


def loss_totals(mask: torch.Tensor, rows: list[int], ranks: Ranks) -> tuple[int, int]:
    """The loss tokens and sequences a mini-batch's losses are normalised by, over every rank:
    the one place they are counted. mask: [B, C] (this rank's rows)."""
    tokens, seqs = global_counts(int(mask[rows].sum()), len(rows), ranks)
    return max(1, tokens), seqs


def update(
    cfg: RunConfig,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    critic: Critic | None,
    rollout: Rollout,
    lp: LogProbs,
    adv: Advantages,
    train_policy: bool,
    step: int,
    ranks: Ranks,
) -> UpdateStats:
    """Train on the step's completions (this rank's rows of them); ``train_policy`` False (PPO's
    critic warm-up) trains only the critic. The learning-rate schedule is the caller's: it
    steps once per RL step. Returns the step's sums, over every rank."""
    r, algo, b = cfg.rl, cfg.algo, len(rollout)
    n_mini, micro = mini_batch_count(cfg, b * ranks.world_size), r.micro_batch_completions
    mine = range(ranks.rank * b, (ranks.rank + 1) * b)  # equal blocks: several ranks need them
    sums = {"policy": 0.0, "value": 0.0, "entropy": 0.0, "clipped": 0.0}
    grad_norm = None
    for epoch in range(algo.ppo_epochs):
        shuffle = (cfg.seed, step, epoch) if algo.ppo_epochs > 1 else None
        for rows_mini in mini_batches(mine, n_mini, shuffle):
            tokens, seqs = loss_totals(adv.mask, rows_mini, ranks)
            if train_policy:
                micros = [rows_mini[u : u + micro] for u in range(0, len(rows_mini), micro)]
                for i, rows in enumerate(micros):
                    with gradient_sync(policy, sync=i == len(micros) - 1):
                        loss, stats = policy_loss(
                            policy,
                            rollout.select(rows),
                            adv.mask[rows],
                            adv.advantages[rows],
                            lp.select(rows),
                            cfg,
                            tokens,
                            seqs,
                            ranks,
                        )
                        loss.backward()
                    for key, value in stats.items():
                        sums[key] += value
                # the global norm: DDP's gradients are summed, FSDP2's DTensors reduce it
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
    # each rank's losses are its shares of the global ones: the sums over ranks are the step's
    keys = ["policy", "value", "entropy", "clipped"]
    local = torch.tensor([sums[k] for k in keys] + [float(adv.mask.sum())], dtype=torch.float64)
    total = dict(zip([*keys, "tokens"], all_reduce_sum(local, ranks).tolist(), strict=True))
    return UpdateStats(
        updates=updates_per_step(cfg, b * ranks.world_size),
        tokens=max(1.0, total["tokens"]) * algo.ppo_epochs,
        entropy=total["entropy"],
        clipped=total["clipped"],
        policy_loss=total["policy"] if train_policy else None,
        value_loss=total["value"] if critic is not None else None,
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
    ranks: Ranks = Ranks(),
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
        ranks=ranks,
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
    if lp.is_weight is not None:  # algo.tis_cap: the engine's policy is not the trainer's
        per_token = per_token * lp.is_weight.to(logp.dtype)
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
        "entropy": float((entropy.detach() * mask).sum()),
        "clipped": float((clipped.to(mask.dtype) * mask).sum()),
    }


def check_ranks(cfg: RunConfig, ranks: Ranks) -> None:
    """What several ranks cannot run, refused before the first step with ``ConfigError``: a
    step's prompts or mini-batches that do not split evenly over the ranks, and Ray workers
    that do not (``rollout.workers`` and ``rewards.workers`` count the run's; each rank drives
    its equal share of them), or that would take a LoRA model from FSDP2 ranks (not built)."""
    if ranks.world_size == 1:
        return
    if cfg.rollout.engine == "vllm":
        raise ConfigError(
            "rollout.engine=vllm runs on one trainer process so far: use rollout.engine=hf or "
            "fast on several ranks"
        )
    if cfg.distributed.backend == "ray":
        d, w = cfg.distributed, ranks.world_size
        if cfg.train.parallel == "fsdp" and cfg.model.lora is not None:
            raise ConfigError(
                "distributed.backend=ray with train.parallel=fsdp and model.lora is not built "
                "(the workers would need the adapters gathered apart): use train.parallel=ddp"
            )
        for key, n in (
            ("rollout.workers", cfg.rollout.workers),
            ("rewards.workers", d.reward_workers),
        ):
            if n % w:
                raise ConfigError(
                    f"{key}={n} counts the run's workers, and each of the {w} trainer ranks "
                    f"drives an equal share of them: use a multiple of {w}"
                )
    shard(cfg.rl.prompts_per_step, ranks)
    check_mini_batches(cfg, ranks)
