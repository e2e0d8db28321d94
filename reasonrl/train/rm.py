"""Reward-model training (the ``rm`` stage): the Bradley-Terry loss on chosen/rejected pairs.

CPU: ``reasonrl run tiny-rm --out runs/tiny-rm`` trains a reward model on the bundled model
with generated chain_sum pairs in a few minutes. One GPU: the same command (``model.device``
auto picks CUDA); real data with ``rm.data.source=dataset rm.data.train_path=<hub id or dir>``.
Leaves out: reward-model ensembles.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from reasonrl.algos import bradley_terry_loss
from reasonrl.config import ConfigError, RunConfig
from reasonrl.logging import RunLogger, training_progress
from reasonrl.models import load_tokenizer
from reasonrl.models.reward import (
    RewardModel,
    add_lora,
    load_reward_model,
    merge_lora,
    pad_left,
    pad_right,
)
from reasonrl.tasks import load_splits, render_prompt
from reasonrl.tasks.preferences import EncodedPair, encode_pairs, load_preference_pairs
from reasonrl.train.checkpoint import (
    Checkpointer,
    optimizer_step,
)
from reasonrl.train.data import step_indices
from reasonrl.train.optim import build_optimizer, warmup_cosine
from reasonrl.train.run import MODEL_DIR, SUMMARY_FILE, start_run


def pair_scores(
    rm: RewardModel, pairs: Sequence[EncodedPair], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of each pair's two responses: (chosen [B], rejected [B]). The pair's prompt is run
    once and its KV cache shared by both responses (a third fewer tokens than two full
    sequences), unless every prompt was truncated away."""
    device = next(rm.parameters()).device
    prompts = [p.prompt for p in pairs]
    if not any(prompts):
        responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        ids, mask = pad_left(prompts + prompts, responses, pad_id)
        scores = rm(ids.to(device), mask.to(device), torch.tensor([len(r) for r in responses]))
        return scores[: len(pairs)], scores[len(pairs) :]
    batch = (
        *pad_left(prompts, [[] for _ in pairs], pad_id),
        *pad_right([(p.chosen, p.rejected) for p in pairs], pad_id),
    )
    scores = rm.score_responses(*(t.to(device) for t in batch))
    return scores[:, 0], scores[:, 1]


def _accuracy(gap: torch.Tensor) -> float:
    """Share of pairs scored chosen > rejected, a tie counting half. gap: [B] chosen − rejected."""
    return ((gap > 0).float() + 0.5 * (gap == 0).float()).mean().item()


@torch.no_grad()
def evaluate_rm(
    rm: RewardModel, pairs: Sequence[EncodedPair], pad_id: int, batch_pairs: int
) -> dict[str, float]:
    """Held-out ``eval/pairwise_accuracy``, ``eval/margin`` (mean chosen − rejected score),
    ``eval/chosen_score``, ``eval/rejected_score`` and, for generated pairs, the accuracy on
    each kind of rejected response (``eval/pairwise_accuracy/<kind>``)."""
    was_training = rm.training
    rm.eval()
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_pairs):
        c, r = pair_scores(rm, pairs[i : i + batch_pairs], pad_id)
        chosen.append(c)
        rejected.append(r)
    rm.train(was_training)
    c, r = torch.cat(chosen), torch.cat(rejected)
    out = {
        "eval/pairwise_accuracy": _accuracy(c - r),
        "eval/margin": (c - r).mean().item(),
        "eval/chosen_score": c.mean().item(),
        "eval/rejected_score": r.mean().item(),
    }
    kinds = [p.kind for p in pairs]
    for kind in sorted({k for k in kinds if k is not None}):
        rows = torch.tensor([k == kind for k in kinds])
        out[f"eval/pairwise_accuracy/{kind}"] = _accuracy((c - r)[rows])
    return out


def train_rm(
    cfg: RunConfig,
    rm: RewardModel,
    tokenizer: Any,
    train_pairs: Sequence[EncodedPair],
    eval_pairs: Sequence[EncodedPair],
    run_dir: Path,
    logger: RunLogger,
    resume_from: Path | None = None,
    on_step: Callable[[int], None] | None = None,
) -> int:
    """Train ``rm`` on encoded pairs for ``cfg.rm.steps`` steps; returns the steps done.

    Logs ``loss/rm``, ``rm/accuracy`` and ``rm/margin`` every step and the held-out metrics of
    :func:`evaluate_rm` at step 0, every ``rm.eval_every`` steps and at the end.
    """
    s = cfg.rm
    pad_id = tokenizer.pad_token_id
    optimizer = build_optimizer(rm.parameters(), s.learning_rate, s.weight_decay)
    scheduler = warmup_cosine(optimizer, s.warmup_steps, s.steps, s.min_lr_ratio)
    ckpt, _ = Checkpointer.for_run(
        run_dir, rm, tokenizer, optimizer, scheduler, cfg.log, resume_from
    )
    start = ckpt.done
    rm.train()
    if start == 0:
        logger.log(0, evaluate_rm(rm, eval_pairs, pad_id, s.micro_batch_pairs))
    with ckpt.on_interrupt(), training_progress(s.steps, "rm", start) as bar:
        for step in range(start, s.steps):
            t0 = time.perf_counter()
            idx = step_indices(len(train_pairs), s.pairs_per_step, step, cfg.seed)
            total = 0.0
            gaps = []
            for m in range(0, len(idx), s.micro_batch_pairs):
                batch = [train_pairs[i] for i in idx[m : m + s.micro_batch_pairs]]
                chosen, rejected = pair_scores(rm, batch, pad_id)
                # Weighted by the micro-batch's share: the sum is the step's mean loss.
                loss = bradley_terry_loss(chosen, rejected, s.margin) * len(batch) / len(idx)
                loss.backward()
                total += loss.item()
                gaps.append((chosen - rejected).detach())
            grad_norm, lr = optimizer_step(rm.parameters(), optimizer, scheduler, s.max_grad_norm)
            ckpt.step_done(step)
            done = ckpt.done
            dt = time.perf_counter() - t0
            gap = torch.cat(gaps)
            accuracy = _accuracy(gap)
            if done % cfg.log.every == 0 or done == s.steps:
                logger.log(
                    done,
                    {
                        "loss/rm": total,
                        "rm/accuracy": accuracy,
                        "rm/margin": gap.mean().item(),
                        "grad_norm": grad_norm,
                        "lr": lr,
                        "perf/step_s": dt,
                        "perf/pairs_per_s": len(idx) / dt,
                    },
                )
            if (s.eval_every and done % s.eval_every == 0) or done == s.steps:
                logger.log(done, evaluate_rm(rm, eval_pairs, pad_id, s.micro_batch_pairs))
            bar.update(done, loss=total, acc=accuracy)
            ckpt.end_of_step(on_step)
    return ckpt.done


def run_rm_stage(
    cfg: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """The ``rm`` stage end to end: pairs, training, the saved model (``run_dir/model``), the
    held-out pairwise accuracy in ``summary.json``, and ``report.html``."""
    if cfg.model.lora is not None and cfg.rm.head != "value":
        raise ConfigError("model.lora in the rm stage needs rm.head=value")
    if cfg.model.gradient_checkpointing:  # it turns off the KV cache that pair_scores shares
        raise ConfigError("model.gradient_checkpointing is not supported by the rm stage")
    console = console or Console()
    t0 = time.time()
    device, resume_from = start_run(cfg, run_dir, resume, overwrite, console)
    path = str(resume_from or cfg.model.path)

    data = cfg.rm.data
    # Only generated pairs are made from the task's problems.
    train, held_out = load_splits(cfg.task) if data.source == "generated" else ([], [])
    tokenizer = load_tokenizer(path)
    lora = cfg.model.lora
    kind = (cfg.rm.head, cfg.model.dtype, device, cfg.rm.pool, cfg.rm.likelihood)
    if lora is None:
        rm = load_reward_model(path, *kind)
    else:  # the base weights, then new adapters or the checkpoint's
        rm = add_lora(load_reward_model(cfg.model.path, *kind), lora, resume_from)
    render = lambda s: render_prompt(s, tokenizer, cfg.task.prompt, cfg.task.chat_template)  # noqa: E731
    train_text, eval_text = load_preference_pairs(data, tokenizer, train, held_out, render)
    train_pairs, cut_train = encode_pairs(train_text, tokenizer, data.max_length)
    eval_pairs, cut_eval = encode_pairs(eval_text, tokenizer, data.max_length)
    if not train_pairs or not eval_pairs:
        raise ConfigError(
            f"need training and held-out pairs: got {len(train_pairs)} and {len(eval_pairs)}"
        )
    console.print(
        f"reward model ({rm.head} head, {rm.pool} pooling, likelihood weight {rm.likelihood}): "
        f"{sum(p.numel() for p in rm.parameters()) / 1e6:.2f}M "
        f"parameters on {device}; pairs: {len(train_pairs)} train ({cut_train} truncated), "
        f"{len(eval_pairs)} held-out ({cut_eval} truncated) at max_length {data.max_length}"
    )

    start_step = int(resume_from.name.split("-")[1]) if resume_from else None
    with RunLogger.for_run(cfg, run_dir, start_step) as logger:
        steps = train_rm(cfg, rm, tokenizer, train_pairs, eval_pairs, run_dir, logger, resume_from)
    merge_lora(rm).save_pretrained(run_dir / MODEL_DIR)  # a plain reward model, LoRA or not
    tokenizer.save_pretrained(run_dir / MODEL_DIR)
    final = evaluate_rm(rm, eval_pairs, tokenizer.pad_token_id, cfg.rm.micro_batch_pairs)

    summary = {
        "name": cfg.name,
        "stage": "rm",
        "steps": steps,
        "eval": {
            "pairwise_accuracy": final["eval/pairwise_accuracy"],
            "margin": final["eval/margin"],
            "n": len(eval_pairs),
            "truncated": cut_eval,
        },
        "train": {"n": len(train_pairs), "truncated": cut_train},
        "wall_s": time.time() - t0,
        "model_dir": str(run_dir / MODEL_DIR),
    }
    by_kind = {
        kind: {
            "pairwise_accuracy": final[f"eval/pairwise_accuracy/{kind}"],
            "n": sum(p.kind == kind for p in eval_pairs),
        }
        for kind in sorted({p.kind for p in eval_pairs if p.kind is not None})
    }
    if by_kind:
        summary["eval"]["by_kind"] = by_kind
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    table = Table(title="held-out preference pairs")
    for col in ("pairwise accuracy", "margin", "n", "truncated"):
        table.add_column(col)
    ev = summary["eval"]
    table.add_row(
        f"{100 * ev['pairwise_accuracy']:.1f}%", f"{ev['margin']:.3f}", str(ev["n"]), str(cut_eval)
    )
    console.print(table)
    if by_kind:
        kinds = Table(title="by kind of rejected response")
        for col in ("kind", "pairwise accuracy", "n"):
            kinds.add_column(col)
        for kind, row in by_kind.items():
            kinds.add_row(kind, f"{100 * row['pairwise_accuracy']:.1f}%", str(row["n"]))
        console.print(kinds)
    from reasonrl.report import build_report

    console.print(f"report: {build_report(run_dir)}")
    return summary
