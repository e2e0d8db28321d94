"""The RL loop (GRPO): sample groups of completions, score them, update the policy.

CPU: ``reasonrl quickstart`` (the bundled model on chain_sum, minutes). One GPU: the same
recipe with ``model.device=cuda``. Leaves out (later issues): PPO/critic, several updates per
batch, dynamic sampling, the fast engine, LoRA, Ray.

One step, top to bottom:
  prompts (P) → engine.generate (P × G completions) → rewards → group-normalised advantages
  → for each micro-batch: log-probs, clipped surrogate + β·k3 KL to the frozen reference,
  aggregated over the step's tokens → one optimizer step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from reasonrl.algos import aggregate, clipped_surrogate, grpo_advantages, kl_estimate
from reasonrl.config import RunConfig
from reasonrl.logging import RunLogger, training_progress
from reasonrl.rewards import score_batch
from reasonrl.rollout.base import Rollout, RolloutEngine
from reasonrl.tasks.base import Sample
from reasonrl.train.checkpoint import load_trainer_state, rng_state, save_checkpoint
from reasonrl.train.data import step_indices
from reasonrl.train.forward import completion_logprobs
from reasonrl.train.optim import build_optimizer, warmup_cosine


@torch.no_grad()
def reference_logprobs(
    ref_model: torch.nn.Module, rollout: Rollout, micro_batch: int, temperature: float
) -> torch.Tensor:
    """Log-probs of the completions under the frozen reference. → [B, C]."""
    c = rollout.completion_ids.shape[1]
    parts = []
    for m in range(0, len(rollout), micro_batch):
        mb = rollout.select(slice(m, m + micro_batch))
        logp, _ = completion_logprobs(ref_model, mb.input_ids, mb.attention_mask, c, temperature)
        parts.append(logp)
    return torch.cat(parts)


def grpo_loss(
    policy: torch.nn.Module,
    mb: Rollout,
    advantages: torch.Tensor,
    ref_logp: torch.Tensor | None,
    cfg: RunConfig,
    step_tokens: int,
    step_seqs: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss of one micro-batch, scaled so that summing it over the step's micro-batches
    gives the loss of the whole step (``step_tokens``/``step_seqs`` are the step's totals).

    advantages: [b]; ref_logp: [b, C] or None (no KL term). Returns (loss, summed statistics).
    """
    r, temperature = cfg.rl, cfg.rollout.temperature
    c = mb.completion_ids.shape[1]
    mask = mb.completion_mask.to(torch.float32)
    logp, entropy = completion_logprobs(
        policy, mb.input_ids, mb.attention_mask, c, temperature, with_entropy=True
    )
    mask = mask.to(logp.dtype)
    # One update per batch: the "old" policy is this one, so the ratio is 1 in value while its
    # gradient is the policy gradient.
    pg, clipped = clipped_surrogate(
        logp, logp.detach(), advantages.to(logp.dtype), r.clip_eps_low, r.clip_eps_high
    )
    per_token = pg
    stats = {"kl/mean": 0.0}
    if ref_logp is not None:
        kl = kl_estimate("k3", logp, ref_logp.to(logp.dtype))
        per_token = pg + r.beta * kl
        stats["kl/mean"] = float((kl.detach() * mask).sum()) / step_tokens
    loss = aggregate(r.loss_agg, per_token, mask, step_tokens, step_seqs)
    stats["loss/total"] = loss.item()
    stats["loss/policy"] = float(aggregate(r.loss_agg, pg.detach(), mask, step_tokens, step_seqs))
    stats["entropy/mean"] = float((entropy * mask).sum()) / step_tokens
    stats["clip/fraction"] = float((clipped.to(mask.dtype) * mask).sum()) / step_tokens
    return loss, stats


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
) -> int:
    """GRPO on ``samples`` (rendered as ``prompts``); returns the number of steps done."""
    r, ro = cfg.rl, cfg.rollout
    group = r.completions_per_prompt
    optimizer = build_optimizer(policy.parameters(), r.learning_rate, r.weight_decay, r.adam_betas)
    scheduler = warmup_cosine(optimizer, r.warmup_steps, r.steps, r.min_lr_ratio)
    start = 0
    if resume_from is not None:
        start, _ = load_trainer_state(resume_from, optimizer, scheduler)
    policy.train()
    done = start
    step_rng = rng_state()

    def checkpoint() -> None:
        save_checkpoint(
            run_dir,
            done,
            policy,
            tokenizer,
            optimizer,
            scheduler,
            rng=step_rng,
            keep=cfg.log.keep_checkpoints,
        )

    try:
        with training_progress(r.steps, "grpo", start) as bar:
            for step in range(start, r.steps):
                t0 = time.perf_counter()
                idx = step_indices(len(samples), r.prompts_per_step, step, cfg.seed)
                batch = [samples[i] for i in idx for _ in range(group)]
                rollout = engine.generate(
                    [prompts[i] for i in idx for _ in range(group)],
                    max_new_tokens=ro.max_new_tokens,
                    temperature=ro.temperature,
                    top_p=ro.top_p,
                    top_k=ro.top_k,
                )
                t_gen = time.perf_counter() - t0
                scored = score_batch(rollout.texts, batch, cfg.rewards)
                rewards = torch.tensor(scored.total, dtype=torch.float32).view(-1, group)
                adv = grpo_advantages(rewards, r.scale_rewards, r.std_eps).flatten()
                adv = adv.to(rollout.completion_ids.device)
                ref_logp = (
                    reference_logprobs(
                        ref_model, rollout, r.micro_batch_completions, ro.temperature
                    )
                    if ref_model is not None and r.beta > 0
                    else None
                )
                step_tokens = int(rollout.completion_mask.sum())
                stats: dict[str, float] = {}
                for m in range(0, len(rollout), r.micro_batch_completions):
                    rows = slice(m, m + r.micro_batch_completions)
                    loss, mb_stats = grpo_loss(
                        policy,
                        rollout.select(rows),
                        adv[rows],
                        None if ref_logp is None else ref_logp[rows],
                        cfg,
                        step_tokens,
                        len(rollout),
                    )
                    loss.backward()
                    for key, value in mb_stats.items():
                        stats[key] = stats.get(key, 0.0) + value
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), r.max_grad_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                done = step + 1
                step_rng = rng_state()  # what a resume from step `done` must start with
                dt = time.perf_counter() - t0
                metrics = {
                    "reward/mean": rewards.nanmean().item(),
                    "reward/std": float(torch.tensor(scored.total).std()),
                    **{
                        f"reward/{k}": float(torch.tensor(v).nanmean())
                        for k, v in scored.components.items()
                    },
                    "reward/uncomputed": sum(x != x for x in scored.total),
                    "groups/all_equal": float((rewards.std(-1) == 0).float().mean()),
                    **stats,
                    "response/length_mean": float(rollout.lengths.float().mean()),
                    "grad_norm": float(grad_norm),
                    "lr": lr,
                    "perf/step_s": dt,
                    "perf/generate_s": t_gen,
                    "perf/tokens_per_s": step_tokens / dt,
                }
                if done % cfg.log.every == 0 or done == r.steps:
                    logger.log(done, metrics)
                if cfg.log.samples_per_log and (done % cfg.log.samples_every == 0 or done == 1):
                    logger.log_samples(
                        done,
                        [
                            {
                                "prompt": batch[i].prompt,
                                "answer": batch[i].answer,
                                "completion": rollout.texts[i],
                                "reward": scored.total[i],
                                **{k: v[i] for k, v in scored.components.items()},
                            }
                            for i in range(0, len(batch), group)[
                                : cfg.log.samples_per_log
                            ]  # one per prompt
                        ],
                    )
                bar.update(done, reward=metrics["reward/mean"], kl=metrics["kl/mean"])
                if on_step is not None:
                    on_step(done)
                if cfg.log.checkpoint_every and done % cfg.log.checkpoint_every == 0:
                    checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        raise
    return done
