"""The RL loop for the GRPO family, RLOO, REINFORCE++ and PPO, as named phases over typed records.

CPU: ``reasonrl quickstart`` (the bundled model on chain_sum, minutes); any algorithm with
``algo.name=ppo|rloo|dapo|…``. One GPU: ``model.device=auto``. With ``model.lora`` the reference
is the adapter-disabled policy (``ref_model`` None). Rollouts come from ``rollout.engine`` (``hf``
or ``fast``) in this process, or from Ray workers (``distributed.backend=ray``, docs/ray.md;
with ``rollout.async_steps`` generated ahead of the update). Several processes (``torchrun``,
docs/distributed.md): ``ranks`` says where this one sits; the caller wraps the policy (and
reference, critic) with ``distributed.wrap_model`` and gives the engine the unwrapped policy.
Every size is the global step's, and the run computes what one process does (to rounding).

One step, top to bottom (the records are in ``train/records.py``):
  collect     P prompts → P × G completions, each generation round scored; DAPO drops groups
              whose rewards are all equal and draws more → ScoredBatch (``train/collect.py``:
              each rank or Ray worker draws a block of whole groups, each completion seeded)
  logprobs    the sampling policy's (the engine's, for stale asynchronous batches), the
              reference's and the critic's view of them → LogProbs
  advantages  the KL penalty folded into the rewards when it is one, then the estimator
              ``algo.advantage`` (``algos.ADVANTAGES`` or a user's by import path) → Advantages
  update      ``ppo_epochs`` passes over mini-batches, one optimizer update each
              (``train/update.py``; the critic, ``train/critic.py``, on the same mini-batches)
  metrics     what the step logs, from sums and counts over every rank (rank 0 logs)
The algorithms' choices are data (``AlgoConfig``, docs/algorithms.md); the maths is in ``algos``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from reasonrl.algos import (
    AdvantageInput,
    Estimator,
    get_advantage,
    kl_in_reward,
    mismatch_weights,
)
from reasonrl.config import AlgoConfig, RunConfig
from reasonrl.distributed import (
    Ranks,
    all_gather_objects,
    all_reduce_sum,
    full_weights,
    unwrap,
)
from reasonrl.envs import ToolUse
from reasonrl.logging import training_progress
from reasonrl.models.forward import completion_logprobs
from reasonrl.models.lora import reference_model
from reasonrl.rollout.base import Episode, Rollout, RolloutEngine
from reasonrl.tasks.base import Sample
from reasonrl.train.checkpoint import Checkpointer
from reasonrl.train.collect import collect, has_signal, rank_round
from reasonrl.train.context import RunContext
from reasonrl.train.critic import Critic
from reasonrl.train.memory import peak_memory_mib
from reasonrl.train.optim import build_optimizer, warmup_cosine
from reasonrl.train.records import Advantages, LogProbs, ScoredBatch, UpdateStats
from reasonrl.train.update import check_ranks, update, updates_per_step
from reasonrl.workers import RayRollouts

LOGGED_KL = "k3"  # kl/mean: never negative and unbiased, comparable across algorithms
ONE_PROCESS = Ranks()


def train_rl(
    ctx: RunContext,
    policy: torch.nn.Module,
    ref_model: torch.nn.Module | None,
    tokenizer: Any,
    engine: RolloutEngine,
    prompts: Sequence[str],
    samples: Sequence[Sample],
    critic: torch.nn.Module | None = None,
) -> int:
    """Train ``policy`` on ``samples`` (rendered as ``prompts``) in ``ctx``'s run; returns the
    steps done.

    The KL reference is ``ref_model``, or for a LoRA policy without one, the policy with its
    adapters disabled. ``critic``: PPO's value model (wrapped like the policy), trained beside
    it. With several ranks every rank calls this with the same arguments."""
    cfg, ranks, logger = ctx.cfg, ctx.ranks, ctx.logger
    r, algo = cfg.rl, cfg.algo
    check_ranks(cfg, ranks)
    estimator = get_advantage(algo.advantage)
    ppo_critic = Critic(critic, cfg, ranks) if critic is not None else None
    optimizer = build_optimizer(policy.parameters(), r.learning_rate, r.weight_decay, r.adam_betas)
    # the policy's schedule spans the steps that train it: none during PPO's critic warm-up
    critic_only = algo.critic_warmup_steps if ppo_critic is not None else 0
    scheduler = warmup_cosine(optimizer, r.warmup_steps, r.steps - critic_only, r.min_lr_ratio)
    remote: RayRollouts | None = None

    def save_more(checkpoint: Path) -> None:  # beside the policy: what resuming exactly needs
        if ppo_critic is not None:
            ppo_critic.save(checkpoint)
        if remote is not None:
            remote.save(checkpoint)

    ckpt, _ = Checkpointer.for_run(
        ctx.run_dir,
        policy,
        tokenizer,
        optimizer,
        scheduler,
        cfg.log,
        ctx.resume_from,
        save_more,
        ranks=ranks,
    )
    if ctx.resume_from is not None and ppo_critic is not None:
        ppo_critic.load(ctx.resume_from)
    policy.train()
    tools = ToolUse.from_config(cfg.rollout)  # None: single turns
    if cfg.distributed.backend == "ray":  # rollouts and rewards in Ray actors, each rank's own
        plan = lambda step, round_: rank_round(cfg, len(samples), step, round_, ranks)  # noqa: E731
        where = (ctx.run_dir, ctx.console, ckpt.done, ctx.device, ranks)
        remote = RayRollouts(cfg, unwrap(policy), tokenizer, prompts, samples, plan, *where)
        if ctx.resume_from is not None:  # the rounds it had sent ahead, from their weights
            remote.resume(ctx.resume_from, r.steps)

    with (
        ckpt.on_interrupt(),
        training_progress(r.steps, algo.name, ckpt.done) as bar,
        remote or contextlib.nullcontext(),
    ):
        for step in range(ckpt.done, r.steps):
            t0 = time.perf_counter()
            if remote is not None:  # this step's rollouts, and with async_steps k the next k
                remote.dispatch_ahead(step)
            with full_weights(policy):  # FSDP2: whole weights, so ranks may generate apart
                batch = collect(cfg, engine, prompts, samples, step, ranks, remote, tools)
            t_gen = time.perf_counter() - t0
            lp = logprobs(cfg, policy, ref_model, ppo_critic, batch.rollout, ranks, batch.staleness)
            adv = advantages(batch, lp, algo, estimator, ranks)
            train_policy = step >= critic_only
            lr = scheduler.get_last_lr()[0] if train_policy else 0.0
            stats = update(
                cfg,
                policy,
                optimizer,
                ppo_critic,
                batch.rollout,
                lp,
                adv,
                train_policy,
                step,
                ranks,
            )
            if train_policy:
                scheduler.step()
            if remote is not None:
                remote.push_weights(unwrap(policy), step + 1)
            ckpt.step_done(step)
            done, dt = ckpt.done, time.perf_counter() - t0
            logged = metrics(batch, lp, stats, ranks)
            logged.update(
                {
                    "optim/lr": lr,
                    "perf/step_s": dt,
                    "perf/generate_s": t_gen,
                    "perf/tokens_per_s": float(batch.rollout.lengths.sum()) / dt,
                    "perf/peak_memory_mib": peak_memory_mib(batch.rollout.input_ids.device),
                }
            )
            if remote is not None:
                logged.update({**remote.metrics(), "async/staleness": float(batch.staleness)})
            if hasattr(engine, "metrics"):  # vllm: its weight sync
                logged.update(engine.metrics())
            if ranks.is_main and (done % cfg.log.every == 0 or done == r.steps):
                logger.log(done, logged)
            if cfg.log.samples_per_log and (done % cfg.log.samples_every == 0 or done == 1):
                gathered = all_gather_objects(
                    batch.sample_records(cfg.log.samples_per_log, tokenizer), ranks
                )
                if ranks.is_main:
                    records = [rec for part in gathered for rec in part]
                    logger.log_samples(done, records[: cfg.log.samples_per_log])
            shown = {"reward": logged["reward/mean"], "kl": logged["kl/mean"]}
            if remote is not None:
                shown.update(remote.progress_fields(logged))
            bar.update(done, **shown)
            ckpt.end_of_step(ctx.on_step)
    return ckpt.done


# --------------------------------------------------------------------------- logprobs


@torch.no_grad()
def _logprobs_of(model: torch.nn.Module, ro: Rollout, cfg: RunConfig, ranks: Ranks) -> torch.Tensor:
    """log π(token) of every completion token under ``model``: [B, C], by micro-batches."""
    micro, c = cfg.rl.micro_batch_completions, ro.completion_ids.shape[1]
    parts = []
    for m in range(0, len(ro), micro):
        mb = ro.select(slice(m, m + micro))
        parts.append(
            completion_logprobs(
                model,
                mb.input_ids,
                mb.attention_mask,
                c,
                cfg.rollout.temperature,
                pack_tokens=cfg.model.pack_tokens,
                ranks=ranks,
            )[0]
        )
    return torch.cat(parts)


def logprobs(
    cfg: RunConfig,
    policy: torch.nn.Module,
    ref_model: torch.nn.Module | None,
    critic: Critic | None,
    rollout: Rollout,
    ranks: Ranks = ONE_PROCESS,
    staleness: int = 0,
) -> LogProbs:
    """The log-probs of the sampling policy (recomputed where the step needs them exactly: the
    ratio's denominator once an update has moved the weights, the KL penalty's when it is a
    reward; with one update they equal the current ones, detached, and are not computed), of the
    reference (only with a KL term), and the critic's values.

    With ``algo.tis_cap`` the ratio is taken to the trainer's (recomputed) and each token's loss
    weighted by π_trainer / π_behaviour, the engine's log-probs being the behaviour policy's,
    truncated or masked (``algo.tis_mode``, algos/mismatch.py): this corrects both an engine
    whose numbers differ from the trainer's (vLLM) and a batch generated ``staleness`` > 0
    updates ago (``rollout.async_steps``). Without it a stale batch takes its ratio to the
    behaviour policy itself."""
    algo = cfg.algo
    several = updates_per_step(cfg, len(rollout) * ranks.world_size) > 1
    tis = algo.tis_cap is not None
    to_behaviour = staleness > 0 and not tis
    recompute = not to_behaviour and (several or algo.kl_in == "reward" or tis)
    policy.eval()  # no dropout while scoring the batch
    old = _logprobs_of(policy, rollout, cfg, ranks) if recompute else None
    ref = None
    # unwrapped: peft's disable_adapter is the model's (no backward here, DDP has nothing to do)
    with reference_model(unwrap(policy), ref_model) as reference:
        if reference is not None and algo.beta > 0:
            ref = _logprobs_of(reference, rollout, cfg, ranks)
    values = critic.values(rollout) if critic is not None else None
    policy.train()
    if to_behaviour:
        return LogProbs(rollout.logprobs, rollout.logprobs, ref, values)
    weight = corrected = None
    if tis:
        weight, corrected = mismatch_weights(
            old, rollout.logprobs, rollout.model_mask, algo.tis_cap, algo.tis_mode
        )
    sampling = old if old is not None else rollout.logprobs
    return LogProbs(
        sampling, old if several or tis else None, ref, values, weight, corrected, old is not None
    )


# --------------------------------------------------------------------------- advantages


def advantages(
    batch: ScoredBatch,
    lp: LogProbs,
    algo: AlgoConfig,
    estimator: Estimator,
    ranks: Ranks = ONE_PROCESS,
) -> Advantages:
    """Advantages per loss token. The loss tokens are the tokens the model sampled
    (``Rollout.model_mask``: an episode's environment tokens are context only), less DAPO's
    overlong filter (truncated completions, no EOS) and the tokens the estimator gives no
    advantage (NaN). With ``kl_in=reward`` the sampling policy's KL, ×β, is taken from the
    sequence rewards (summed over the row) and from each token's reward. With several ranks the
    estimator's batch statistics sum over them (``AdvantageInput.sum_ranks``).

    Token-level estimators (GAE, REINFORCE++) see only model tokens: the outcome lands on the
    last one, and the recursion steps from each model token to the next, so an observation
    between two turns is part of the transition (the environment's move), not an action. The
    critic's value at the next model token, which has read the observation, is the bootstrap;
    its values on environment tokens are neither targets nor used."""
    ro = batch.rollout
    mask = ro.model_mask.to(torch.float32)
    if algo.overlong_filter:
        mask = mask * ro.finished.to(mask.device).unsqueeze(-1)
    kl = lp.kl(algo.kl) if algo.kl_in == "reward" and algo.kl is not None else None
    beta = algo.beta if kl is not None else 0.0
    rewards = batch.rewards.to(mask.device)
    if kl is not None:
        rewards = rewards - beta * (kl * mask).sum(-1).view_as(rewards)
    outcome = torch.nan_to_num(batch.rewards.flatten().to(mask.device), nan=0.0)
    x = AdvantageInput(
        rewards,
        kl_in_reward(outcome, mask, kl, beta),
        mask,
        lp.values,
        algo.scale_rewards,
        algo.std_eps,
        algo.whiten,
        algo.gamma,
        algo.lam,
        lambda t: all_reduce_sum(t, ranks),
    )
    adv, returns = estimator(x)
    mask = mask * ~torch.isnan(adv)
    return Advantages(torch.nan_to_num(adv, nan=0.0), returns, mask)


# --------------------------------------------------------------------------- metrics


def metrics(
    batch: ScoredBatch, lp: LogProbs, stats: UpdateStats, ranks: Ranks = ONE_PROCESS
) -> dict[str, float]:
    """What one step logs (namespaced keys; token statistics are means over loss tokens), of the
    whole step: the per-completion values of every rank gathered (small), token sums summed.
    Token statistics and lengths count the model's tokens, not an episode's environment ones."""
    cmask = batch.rollout.model_mask.to(torch.float32)
    kl = lp.kl(LOGGED_KL)
    kl_sums = torch.tensor(
        # float64 sums: the ranks' partial sums then add up to one process's to rounding
        [float((kl.double() * cmask).sum()) if kl is not None else 0.0, float(cmask.sum())],
        dtype=torch.float64,
    )
    kl_sum, kl_count = all_reduce_sum(kl_sums, ranks).tolist()
    ro = batch.rollout
    parts = all_gather_objects(
        (
            batch.rewards,
            batch.components,
            batch.uncomputed,
            ro.lengths.tolist(),
            ro.episodes,
            [s.group for s in batch.samples],
        ),
        ranks,
    )
    rewards = torch.cat([p[0] for p in parts])
    components = {k: [v for p in parts for v in p[1][k]] for k in batch.components}
    uncomputed = {k: [v for p in parts for v in p[2][k]] for k in batch.uncomputed}
    lengths = [n for p in parts for n in p[3]]
    flat = rewards.flatten()
    valid = flat[~torch.isnan(flat)]
    policy_loss = (stats.policy_loss or 0.0) / stats.updates
    out = {
        "reward/mean": float(valid.mean()) if valid.numel() else float("nan"),
        "reward/std": float(valid.std()) if valid.numel() > 1 else 0.0,
        **{f"reward/{k}": _nanmean(v) for k, v in components.items()},
        **{f"reward/{k}/uncomputed": sum(v) for k, v in uncomputed.items()},
        "reward/uncomputed": int(torch.isnan(flat).sum()),
        "groups/all_equal": float(
            sum(not has_signal(g) for g in rewards) / max(1, rewards.shape[0])
        ),
        "sampling/rounds": batch.rounds,
        "kl/mean": kl_sum / max(kl_count, 1.0) if kl is not None else math.nan,
        "response/length_mean": sum(lengths) / len(lengths),
        "loss/total": policy_loss + (stats.value_loss or 0.0) / stats.updates,
        "loss/policy": policy_loss,
        "entropy/mean": stats.entropy / stats.tokens,
        "clip/fraction": stats.clipped / stats.tokens,
    }
    if ro.episodes is not None:
        out.update(
            episode_metrics([e for p in parts for e in p[4]], [g for p in parts for g in p[5]])
        )
    if batch.dropped:
        out["sampling/dropped_groups"] = batch.dropped
    if stats.grad_norm is not None:
        out["optim/grad_norm"] = stats.grad_norm
    if stats.value_loss is not None:
        out["loss/value"] = stats.value_loss / stats.updates
    if lp.recomputed:
        out.update(mismatch_metrics(ro, lp, cmask, ranks))
    return out


def mismatch_metrics(
    rollout: Rollout, lp: LogProbs, mask: torch.Tensor, ranks: Ranks
) -> dict[str, float]:
    """How far the engine's log-probs (the behaviour policy's) are from the trainer's on the
    same tokens, over the step's loss tokens: ``rollout/logprob_diff/mean`` and ``/max`` of
    |log π_trainer − log μ|, and with ``algo.tis_cap`` the share of loss tokens whose weight was
    truncated or masked, ``rollout/tis_clipped``. Only where the trainer recomputed its own."""
    diff = (lp.sampling - rollout.logprobs.to(lp.sampling.dtype)).abs().double() * mask
    corrected = 0.0 if lp.is_corrected is None else float((lp.is_corrected * mask.bool()).sum())
    sums = (float(diff.sum()), float(diff.max()), corrected, float(mask.sum()))
    parts = all_gather_objects(sums, ranks)  # one collective for the four
    tokens = sum(p[3] for p in parts)
    out = {
        "rollout/logprob_diff/mean": sum(p[0] for p in parts) / max(tokens, 1.0),
        "rollout/logprob_diff/max": max(p[1] for p in parts),
    }
    if lp.is_corrected is not None:
        out["rollout/tis_clipped"] = sum(p[2] for p in parts) / max(tokens, 1.0)
    return out


def episode_metrics(episodes: list[Episode], groups: list[str]) -> dict[str, float]:
    """Tool use in a step's episodes: model turns and calls per episode (in all, per tool, and
    per problem group when there are several, ``Sample.group``: whether the model learns which
    problems are worth a call), and failed calls, in all and per error kind (``envs.ERRORS``;
    the step's counts)."""
    n = max(1, len(episodes))
    calls, errors = Counter(), Counter()
    by_group: dict[str, list[int]] = {}
    for e, group in zip(episodes, groups, strict=True):
        calls.update(e.calls)
        errors.update(e.errors)
        by_group.setdefault(group, []).append(e.calls_made)
    per_group = by_group if len(by_group) > 1 else {}
    return {
        "episode/turns": sum(e.model_turns for e in episodes) / n,
        "tools/calls_per_episode": sum(calls.values()) / n,
        **{f"tools/{name}/calls_per_episode": k / n for name, k in sorted(calls.items())},
        **{f"tools/calls_per_episode/{g}": sum(c) / len(c) for g, c in sorted(per_group.items())},
        "tools/errors": float(sum(errors.values())),
        **{f"tools/errors/{kind}": float(k) for kind, k in sorted(errors.items())},
    }


def _nanmean(values: list[float]) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return sum(valid) / len(valid) if valid else float("nan")
