"""The RL loop for the GRPO family, RLOO, REINFORCE++ and PPO: sample, score, update.

CPU: ``reasonrl quickstart`` (the bundled model on chain_sum, minutes); any algorithm with
``algo.name=ppo|rloo|dapo|…``. One GPU: the same recipe, ``model.device=auto`` picks CUDA.
With ``model.lora`` only adapters train and the reference is the adapter-disabled policy
(``ref_model`` None). Rollouts come from ``rollout.engine`` (``hf`` or ``fast``). Leaves out:
Ray (several processes or machines).

One step, top to bottom:
  prompts (P) → engine.generate (P × G completions) → rewards (DAPO: drop groups whose rewards
  are all equal and draw more) → old / reference log-probs, critic values → advantages
  (group-normalised, leave-one-out, REINFORCE++ returns or GAE) → ``ppo_epochs`` passes over
  mini-batches: clipped surrogate (+ β·KL in the loss) aggregated over the mini-batch's tokens,
  one optimizer update each; PPO's critic is updated on the same mini-batches.
The algorithms' choices are data (``AlgoConfig``, docs/algorithms.md); the maths is in ``algos``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reasonrl.algos import (
    ADVANTAGES,
    aggregate,
    clipped_surrogate,
    entropy_bonus,
    gae,
    importance_ratio,
    kl_estimate,
    kl_in_loss,
    kl_in_reward,
    masked_whiten,
    reinforce_pp_advantages,
    value_loss,
)
from reasonrl.config import AlgoConfig, RunConfig
from reasonrl.logging import RunLogger, training_progress
from reasonrl.models.forward import completion_logprobs
from reasonrl.models.loading import save_torch
from reasonrl.models.lora import reference_model
from reasonrl.models.value import ValueModel
from reasonrl.rewards import score_batch
from reasonrl.rollout.base import Rollout, RolloutEngine, concat_rollouts
from reasonrl.tasks.base import Sample
from reasonrl.train.checkpoint import Checkpointer
from reasonrl.train.data import step_indices
from reasonrl.train.memory import peak_memory_mib
from reasonrl.train.optim import build_optimizer, warmup_cosine

CRITIC_DIR, CRITIC_OPTIMIZER = "critic", "critic_optimizer.pt"


@dataclass(frozen=True)
class StepBatch:
    """The completions of one RL step, grouped by prompt (G consecutive rows per prompt)."""

    rollout: Rollout
    samples: list[Sample]
    rewards: torch.Tensor  # [P, G] weighted total, NaN where a component could not be computed
    components: dict[str, list[float]]  # each reward component per completion
    uncomputed: dict[str, int]  # per component, the scores that could not be computed
    rounds: int  # generation rounds used (more than 1 only with dynamic sampling)


def collect(
    cfg: RunConfig,
    engine: RolloutEngine,
    prompts: Sequence[str],
    samples: Sequence[Sample],
    step: int,
) -> StepBatch:
    """Generate and score the step's groups. With ``algo.dynamic_sampling`` (DAPO), groups whose
    valid rewards are all equal carry no signal: they are dropped and more prompts drawn, up to
    ``algo.max_sampling_rounds`` rounds; the step then trains on the groups it has."""
    r, ro, algo = cfg.rl, cfg.rollout, cfg.algo
    group, want = r.completions_per_prompt, r.prompts_per_step
    parts: list[Rollout] = []
    kept_samples: list[Sample] = []
    kept_rewards: list[torch.Tensor] = []
    components: dict[str, list[float]] = {}
    uncomputed: dict[str, int] = {}
    rounds = 0
    while rounds < (algo.max_sampling_rounds if algo.dynamic_sampling else 1):
        # Round k > 0 draws from its own deterministic stream, so resume stays exact.
        idx = step_indices(len(samples), want, step, cfg.seed + 7919 * rounds)
        batch = [samples[i] for i in idx for _ in range(group)]
        rollout = engine.generate(
            [prompts[i] for i in idx for _ in range(group)],
            max_new_tokens=ro.max_new_tokens,
            temperature=ro.temperature,
            top_p=ro.top_p,
            top_k=ro.top_k,
        )
        scored = score_batch(rollout.texts, batch, cfg.rewards, rollout.lengths.tolist())
        rewards = torch.tensor(scored.total, dtype=torch.float32).view(-1, group)
        keep = list(range(len(idx)))
        if algo.dynamic_sampling:
            keep = [g for g in keep if _has_signal(rewards[g])][: want - len(kept_rewards)]
        rows = [g * group + j for g in keep for j in range(group)]
        parts.append(rollout.select(rows))
        kept_samples += [batch[i] for i in rows]
        kept_rewards += [rewards[g] for g in keep]
        for name, values in scored.components.items():
            components.setdefault(name, []).extend(values[i] for i in rows)
            uncomputed[name] = uncomputed.get(name, 0) + scored.uncomputed(name, rows)
        rounds += 1
        if len(kept_rewards) >= want:
            break
    if not kept_rewards:  # every group was degenerate: train on the last round (zero advantage)
        failed = {name: scored.uncomputed(name) for name in scored.components}
        return StepBatch(rollout, batch, rewards, scored.components, failed, rounds)
    return StepBatch(
        concat_rollouts(parts, engine.pad_id),
        kept_samples,
        torch.stack(kept_rewards),
        components,
        uncomputed,
        rounds,
    )


def _has_signal(group_rewards: torch.Tensor) -> bool:
    valid = group_rewards[~torch.isnan(group_rewards)]
    return valid.numel() > 1 and bool((valid != valid[0]).any())


def loss_mask(batch: StepBatch, algo: AlgoConfig) -> torch.Tensor:
    """Completion tokens that carry loss: [B, C]. Token-level estimators also drop completions
    whose reward is missing; DAPO's overlong filter drops truncated ones (no EOS)."""
    ro = batch.rollout
    mask = ro.completion_mask.to(torch.float32)
    if algo.advantage in ("reinforce_pp", "gae"):
        missing = torch.isnan(batch.rewards.flatten()).to(mask.device)
        mask = mask * (~missing).unsqueeze(-1)
    if algo.overlong_filter:
        mask = mask * ro.finished.to(mask.device).unsqueeze(-1)
    return mask


def token_advantages(
    batch: StepBatch,
    algo: AlgoConfig,
    mask: torch.Tensor,
    reward_kl: torch.Tensor | None,
    values: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Advantages per completion token [B, C] and, for PPO, the critic's returns [B, C].

    reward_kl: [B, C] KL of the sampling policy to the reference when ``kl_in=reward``."""
    b, c = mask.shape
    penalty = algo.beta if reward_kl is not None else 0.0
    returns = None
    if algo.advantage in ("grpo", "dr_grpo", "rloo"):
        rewards = batch.rewards.to(mask.device)
        if reward_kl is not None:  # the sequence reward minus β·Σ kl over its tokens
            rewards = rewards - penalty * (reward_kl * mask).sum(-1).view_as(rewards)
        fn = ADVANTAGES[algo.advantage]
        if algo.advantage == "grpo":
            adv = fn(rewards, algo.scale_rewards, algo.std_eps)
        else:
            adv = fn(rewards)
        adv = adv.reshape(b, 1).expand(b, c)
    else:
        outcome = torch.nan_to_num(batch.rewards.flatten().to(mask.device), nan=0.0)
        token_rewards = kl_in_reward(outcome, mask, reward_kl, penalty)
        if algo.advantage == "reinforce_pp":
            adv = reinforce_pp_advantages(token_rewards, mask, algo.gamma or 1.0, algo.std_eps)
        else:
            adv, returns = gae(token_rewards, values, mask, algo.gamma or 1.0, algo.lam or 1.0)
            if algo.whiten:
                adv = masked_whiten(adv, mask, algo.std_eps or 1e-8)
    if algo.whiten and algo.advantage in ("grpo", "dr_grpo", "rloo"):
        adv = masked_whiten(adv, mask, algo.std_eps or 1e-8)
    return adv * mask, returns


def policy_loss(
    policy: torch.nn.Module,
    mb: Rollout,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    cfg: RunConfig,
    mini_tokens: int,
    mini_seqs: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy loss of one micro-batch, scaled so that summing it over a mini-batch's
    micro-batches gives the loss of the whole mini-batch (``mini_tokens``/``mini_seqs`` are the
    mini-batch's totals of loss tokens and sequences).

    mask, advantages, old_logp, ref_logp: [b, C]; old_logp None means on-policy (the current
    log-probs, detached). Returns (loss, statistics summed over the micro-batch).
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
    old = logp.detach() if old_logp is None else old_logp.to(logp.dtype)
    pg, clipped = clipped_surrogate(
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
    per_token = pg
    stats = {}
    if ref_logp is not None and algo.kl_in == "loss" and algo.beta > 0:
        kl = kl_estimate(algo.kl, logp, ref_logp.to(logp.dtype))
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
    stats["loss/policy"] = loss.item()
    stats["entropy/mean"] = float((entropy * mask).sum())
    stats["clip/fraction"] = float((clipped.to(mask.dtype) * mask).sum())
    return loss, stats


@torch.no_grad()
def _forward_all(fn: Callable[[Rollout], torch.Tensor], ro: Rollout, micro: int) -> torch.Tensor:
    return torch.cat([fn(ro.select(slice(m, m + micro))) for m in range(0, len(ro), micro)])


def train_rl(
    cfg: RunConfig,
    policy: torch.nn.Module,
    ref_model: torch.nn.Module | None,
    tokenizer: Any,
    engine: RolloutEngine,
    prompts: Sequence[str],
    samples: Sequence[Sample],
    run_dir: Path,
    logger: RunLogger,
    resume_from: Path | None = None,
    on_step: Callable[[int], None] | None = None,
    critic: ValueModel | None = None,
) -> int:
    """Train ``policy`` on ``samples`` (rendered as ``prompts``); returns the steps done.

    The KL reference is ``ref_model``, or for a LoRA policy without one, the policy with its
    adapters disabled."""
    r, algo, temperature = cfg.rl, cfg.algo, cfg.rollout.temperature
    micro = r.micro_batch_completions
    optimizer = build_optimizer(policy.parameters(), r.learning_rate, r.weight_decay, r.adam_betas)
    # the policy's schedule spans the steps that train it: none during PPO's critic warm-up
    critic_only = algo.critic_warmup_steps if critic is not None else 0
    scheduler = warmup_cosine(optimizer, r.warmup_steps, r.steps - critic_only, r.min_lr_ratio)
    critic_opt = None
    if critic is not None:
        critic_opt = build_optimizer(
            critic.parameters(), algo.critic_learning_rate, r.weight_decay, r.adam_betas
        )

    def save_critic(path: Path) -> None:
        if critic is not None and critic_opt is not None:
            critic.save_pretrained(path / CRITIC_DIR)
            save_torch(critic_opt.state_dict(), path / CRITIC_OPTIMIZER)

    ckpt, _ = Checkpointer.for_run(
        run_dir, policy, tokenizer, optimizer, scheduler, cfg.log, resume_from, save_critic
    )
    start = ckpt.done
    if resume_from is not None and critic_opt is not None:
        critic_opt.load_state_dict(torch.load(resume_from / CRITIC_OPTIMIZER))
    policy.train()

    def logp_of(model: torch.nn.Module) -> Callable[[Rollout], torch.Tensor]:
        return lambda mb: completion_logprobs(
            model,
            mb.input_ids,
            mb.attention_mask,
            mb.completion_ids.shape[1],
            temperature,
            pack_tokens=cfg.model.pack_tokens,
        )[0]

    def values_of(mb: Rollout) -> torch.Tensor:
        assert critic is not None
        c = mb.completion_ids.shape[1]
        return critic.completion_values(mb.input_ids, mb.attention_mask, c, cfg.model.pack_tokens)

    with ckpt.on_interrupt(), training_progress(r.steps, algo.name, start) as bar:
        for step in range(start, r.steps):
            t0 = time.perf_counter()
            batch = collect(cfg, engine, prompts, samples, step)
            ro = batch.rollout
            t_gen = time.perf_counter() - t0
            mask = loss_mask(batch, algo)
            b = len(ro)
            mini = min(r.mini_batch_completions or b, b)
            updates = algo.ppo_epochs * math.ceil(b / mini)
            policy.eval()  # no dropout while scoring the batch
            # The sampling policy's log-probs: the ratio's denominator once an update has moved
            # the weights (several updates per step), and the KL penalty's when it is a reward.
            # With one update they equal the current ones, detached, so they are not computed.
            needs_old = updates > 1 or algo.kl_in == "reward"
            old_logp = _forward_all(logp_of(policy), ro, micro) if needs_old else None
            ref_logp = None
            with reference_model(policy, ref_model) as ref:
                if ref is not None and algo.beta > 0:
                    ref_logp = _forward_all(logp_of(ref), ro, micro)
            reward_kl = None
            if algo.kl_in == "reward" and ref_logp is not None:
                reward_kl = kl_estimate(algo.kl, old_logp, ref_logp)
            old_values = None
            if critic is not None:
                old_values = _forward_all(values_of, ro, micro)
            policy.train()
            adv, returns = token_advantages(batch, algo, mask, reward_kl, old_values)

            stats: dict[str, float] = {}
            train_policy = step >= critic_only
            for _ in range(algo.ppo_epochs):
                order = torch.randperm(b).tolist() if algo.ppo_epochs > 1 else list(range(b))
                for m in range(0, b, mini):
                    rows_mini = order[m : m + mini]
                    tokens = max(1, int(mask[rows_mini].sum()))
                    for u in range(0, len(rows_mini), micro):
                        rows = rows_mini[u : u + micro]
                        mb = ro.select(rows)
                        if train_policy:
                            loss, mb_stats = policy_loss(
                                policy,
                                mb,
                                mask[rows],
                                adv[rows],
                                old_logp[rows] if updates > 1 else None,
                                ref_logp[rows] if ref_logp is not None else None,
                                cfg,
                                tokens,
                                len(rows_mini),
                            )
                            loss.backward()
                            _accumulate(stats, mb_stats)
                        if critic is not None:
                            v = values_of(mb)
                            vl, _ = value_loss(v, old_values[rows], returns[rows], algo.value_clip)
                            vloss = aggregate("token_mean", vl, mask[rows], tokens, len(rows_mini))
                            vloss.backward()
                            _accumulate(stats, {"loss/value": vloss.item()})
                    if train_policy:
                        stats["grad_norm"] = float(
                            torch.nn.utils.clip_grad_norm_(policy.parameters(), r.max_grad_norm)
                        )
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    if critic is not None and critic_opt is not None:
                        torch.nn.utils.clip_grad_norm_(critic.parameters(), r.max_grad_norm)
                        critic_opt.step()
                        critic_opt.zero_grad(set_to_none=True)
            lr = scheduler.get_last_lr()[0] if train_policy else 0.0
            if train_policy:
                scheduler.step()
            ckpt.step_done(step)
            done = ckpt.done
            dt = time.perf_counter() - t0
            for key in ("loss/policy", "loss/value"):
                if key in stats:
                    stats[key] /= updates  # a mean over the step's optimizer updates
            metrics = step_metrics(batch, mask, stats, ref_logp, old_logp, algo)
            metrics.update(
                {
                    "lr": lr,
                    "perf/step_s": dt,
                    "perf/generate_s": t_gen,
                    "perf/tokens_per_s": float(ro.lengths.sum()) / dt,
                    "perf/peak_memory_mib": peak_memory_mib(ro.input_ids.device),
                }
            )
            if done % cfg.log.every == 0 or done == r.steps:
                logger.log(done, metrics)
            if cfg.log.samples_per_log and (done % cfg.log.samples_every == 0 or done == 1):
                logger.log_samples(done, sample_records(batch, cfg, tokenizer))
            bar.update(done, reward=metrics["reward/mean"], kl=metrics["kl/mean"])
            ckpt.end_of_step(on_step)
    return ckpt.done


def _accumulate(stats: dict[str, float], more: dict[str, float]) -> None:
    for key, value in more.items():
        stats[key] = stats.get(key, 0.0) + value


def step_metrics(
    batch: StepBatch,
    mask: torch.Tensor,
    stats: dict[str, float],
    ref_logp: torch.Tensor | None,
    old_logp: torch.Tensor | None,
    algo: AlgoConfig,
) -> dict[str, float]:
    """What one step logs (namespaced keys; token statistics are means over loss tokens)."""
    rewards = batch.rewards
    tokens = max(1.0, float(mask.sum())) * algo.ppo_epochs
    cmask = batch.rollout.completion_mask.to(torch.float32)
    kl = float("nan")
    if ref_logp is not None:
        logp = old_logp if old_logp is not None else batch.rollout.logprobs
        kl = float((kl_estimate("k3", logp, ref_logp) * cmask).sum() / cmask.sum().clamp(min=1))
    flat = rewards.flatten()
    valid = flat[~torch.isnan(flat)]
    metrics = {
        "reward/mean": float(valid.mean()) if valid.numel() else float("nan"),
        "reward/std": float(valid.std()) if valid.numel() > 1 else 0.0,
        **{f"reward/{k}": _nanmean(v) for k, v in batch.components.items()},
        **{f"reward/{k}/uncomputed": n for k, n in batch.uncomputed.items()},
        "reward/uncomputed": int(torch.isnan(flat).sum()),
        "groups/all_equal": float(
            sum(not _has_signal(g) for g in rewards) / max(1, rewards.shape[0])
        ),
        "sampling/rounds": batch.rounds,
        "kl/mean": kl,
        "response/length_mean": float(batch.rollout.lengths.float().mean()),
        "loss/total": stats.get("loss/policy", 0.0) + stats.get("loss/value", 0.0),
        "loss/policy": stats.get("loss/policy", 0.0),
        "entropy/mean": stats.get("entropy/mean", 0.0) / tokens,
        "clip/fraction": stats.get("clip/fraction", 0.0) / tokens,
    }
    if "grad_norm" in stats:
        metrics["grad_norm"] = stats["grad_norm"]
    if "loss/value" in stats:
        metrics["loss/value"] = stats["loss/value"]
    return metrics


def _nanmean(values: list[float]) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return sum(valid) / len(valid) if valid else float("nan")


def sample_records(batch: StepBatch, cfg: RunConfig, tokenizer: Any) -> list[dict[str, Any]]:
    """One logged completion per prompt (``samples.jsonl``): the prompt as the model saw it
    (decoded from its tokens, chat template and special tokens included), the completion, the
    gold answer, the total reward and each component under ``rewards``, the token count of
    each part, and whether the completion was cut at ``max_new_tokens``."""
    ro, group = batch.rollout, cfg.rl.completions_per_prompt
    flat = batch.rewards.flatten().tolist()
    records = []
    for i in range(0, len(batch.samples), group)[: cfg.log.samples_per_log]:
        prompt_ids = ro.prompt_ids[i][ro.prompt_mask[i].bool()].tolist()
        records.append(
            {
                "prompt": tokenizer.decode(prompt_ids, skip_special_tokens=False),
                "completion": ro.texts[i],
                "gold_answer": batch.samples[i].answer,
                "reward": flat[i],
                "rewards": {k: v[i] for k, v in batch.components.items()},
                "tokens": {"prompt": len(prompt_ids), "completion": int(ro.lengths[i])},
                "truncated": not bool(ro.finished[i]),
            }
        )
    return records
