"""Reward-model training (the ``rm`` stage): the Bradley-Terry loss on chosen/rejected pairs.

CPU: ``reasonrl run tiny-rm --out runs/tiny-rm`` trains a reward model on the bundled model
with generated chain_sum pairs in a few minutes. One GPU: the same command (``model.device``
auto picks CUDA); real data with ``rm.data.source=dataset rm.data.train_path=<hub id or dir>``.
Leaves out: reward-model ensembles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from reasonrl.algos import bradley_terry_loss
from reasonrl.config import ConfigError
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
from reasonrl.train.context import MODEL_DIR, RunContext, StepOutput
from reasonrl.train.data import step_indices


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
    ctx: RunContext,
    rm: RewardModel,
    tokenizer: Any,
    train_pairs: Sequence[EncodedPair],
    eval_pairs: Sequence[EncodedPair],
) -> int:
    """Train ``rm`` on encoded pairs for ``rm.steps`` steps; returns the steps done.

    Logs ``loss/rm``, ``rm/accuracy`` and ``rm/margin`` every step and the held-out metrics of
    :func:`evaluate_rm` at step 0, every ``rm.eval_every`` steps and at the end.
    """
    s = ctx.cfg.rm
    pad_id = tokenizer.pad_token_id
    loop = ctx.loop(rm, tokenizer, s, "rm")

    def train_step(step: int) -> StepOutput:
        idx = step_indices(len(train_pairs), s.pairs_per_step, step, ctx.cfg.seed)
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
        gap = torch.cat(gaps)
        accuracy = _accuracy(gap)
        metrics = {"loss/rm": total, "rm/accuracy": accuracy, "rm/margin": gap.mean().item()}
        return StepOutput(metrics, {"loss": total, "acc": accuracy}, {"pairs": len(idx)})

    return loop.run(
        train_step,
        lambda: evaluate_rm(rm, eval_pairs, pad_id, s.micro_batch_pairs),
        s.eval_every,
    )


def rm_stage(ctx: RunContext) -> dict[str, Any]:
    """The ``rm`` stage: pairs, training, the saved model (``run_dir/model``) and the
    held-out pairwise accuracy; returns the stage's part of ``summary.json``."""
    cfg, console, resume_from = ctx.cfg, ctx.console, ctx.resume_from
    if ctx.ranks.world_size > 1:
        # pair_scores calls score_responses, not forward: DDP's gradient hooks would not run
        raise ConfigError("the rm stage runs on one process: start it without torchrun")
    path = str(resume_from or cfg.model.path)
    data = cfg.rm.data
    # Only generated pairs are made from the task's problems.
    train, held_out = load_splits(cfg.task) if data.source == "generated" else ([], [])
    tokenizer = load_tokenizer(path)
    lora = cfg.model.lora
    kind = (cfg.rm.head, cfg.model.dtype, ctx.device, cfg.rm.pool, cfg.rm.likelihood)
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
        f"parameters on {ctx.device}; pairs: {len(train_pairs)} train ({cut_train} truncated), "
        f"{len(eval_pairs)} held-out ({cut_eval} truncated) at max_length {data.max_length}"
    )

    steps = train_rm(ctx, rm, tokenizer, train_pairs, eval_pairs)
    merge_lora(rm).save_pretrained(ctx.run_dir / MODEL_DIR)  # a plain reward model, LoRA or not
    tokenizer.save_pretrained(ctx.run_dir / MODEL_DIR)
    final = evaluate_rm(rm, eval_pairs, tokenizer.pad_token_id, cfg.rm.micro_batch_pairs)

    summary: dict[str, Any] = {
        "steps": steps,
        "eval": {
            "pairwise_accuracy": final["eval/pairwise_accuracy"],
            "margin": final["eval/margin"],
            "n": len(eval_pairs),
            "truncated": cut_eval,
        },
        "train": {"n": len(train_pairs), "truncated": cut_train},
        "model_dir": str(ctx.run_dir / MODEL_DIR),
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
    _print_eval(console, summary["eval"])
    return summary


def _print_eval(console: Console, ev: dict[str, Any]) -> None:
    """The held-out pairwise accuracy table, and one by kind of rejected response."""
    table = Table(title="held-out preference pairs")
    for col in ("pairwise accuracy", "margin", "n", "truncated"):
        table.add_column(col)
    table.add_row(
        f"{100 * ev['pairwise_accuracy']:.1f}%",
        f"{ev['margin']:.3f}",
        str(ev["n"]),
        str(ev["truncated"]),
    )
    console.print(table)
    if "by_kind" in ev:
        kinds = Table(title="by kind of rejected response")
        for col in ("kind", "pairwise accuracy", "n"):
            kinds.add_column(col)
        for kind, row in ev["by_kind"].items():
            kinds.add_row(kind, f"{100 * row['pairwise_accuracy']:.1f}%", str(row["n"]))
        console.print(kinds)
