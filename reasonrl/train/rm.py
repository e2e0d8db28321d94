"""Reward-model training (the ``rm`` stage): the Bradley-Terry loss on chosen/rejected pairs.

CPU: ``reasonrl run tiny-rm --out runs/tiny-rm`` trains a reward model on the bundled model
with generated chain_sum pairs in a few minutes. One GPU: the same command (``model.device``
auto picks CUDA); real data with ``rm.data.source=dataset rm.data.train_path=<hub id or dir>``.
Several processes (``torchrun --nproc-per-node N -m reasonrl run tiny-rm``, ``train.parallel``
ddp or fsdp): the reward model is wrapped by ``wrap_model`` and always called through its
``forward`` (the shared-prompt scoring included), so DDP's and FSDP2's hooks run; each rank
takes its block of the step's pairs and divides its loss by the pairs of every rank, so the
summed gradients are one process's; the step's metrics come from every rank's scores, gathered;
the held-out pairs are sharded and their scores gathered. Rank 0 writes the model.
Leaves out: reward-model ensembles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from reasonrl.algos import bradley_terry_loss
from reasonrl.config import ConfigError
from reasonrl.distributed import (
    Ranks,
    all_gather_objects,
    all_reduce_sum,
    full_model_state,
    full_weights,
    global_counts,
    gradient_sync,
    is_sharded,
    shard,
    unwrap,
    wrap_model,
)
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
    rm: torch.nn.Module, pairs: Sequence[EncodedPair], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of each pair's two responses: (chosen [B], rejected [B]). The pair's prompt is run
    once and its KV cache shared by both responses (a third fewer tokens than two full
    sequences), unless every prompt was truncated away. ``rm``: a :class:`RewardModel`, or one
    wrapped by ``wrap_model`` (both forms are its forward)."""
    device = next(rm.parameters()).device
    prompts = [p.prompt for p in pairs]
    if not any(prompts):
        responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        ids, mask = pad_left(prompts + prompts, responses, pad_id)
        scores = rm(ids.to(device), mask.to(device), torch.tensor([len(r) for r in responses]))
        return scores[: len(pairs)], scores[len(pairs) :]
    prompt_ids, prompt_mask = pad_left(prompts, [[] for _ in pairs], pad_id)
    response_ids, response_mask = pad_right([(p.chosen, p.rejected) for p in pairs], pad_id)
    scores = rm(
        prompt_ids.to(device),
        prompt_mask.to(device),
        responses=(response_ids.to(device), response_mask.to(device)),
    )
    return scores[:, 0], scores[:, 1]


def _accuracy(gap: torch.Tensor) -> float:
    """Share of pairs scored chosen > rejected, a tie counting half. gap: [B] chosen − rejected."""
    return ((gap > 0).float() + 0.5 * (gap == 0).float()).mean().item()


@torch.no_grad()
def evaluate_rm(
    rm: torch.nn.Module,
    pairs: Sequence[EncodedPair],
    pad_id: int,
    batch_pairs: int,
    ranks: Ranks = Ranks(),
) -> dict[str, float]:
    """Held-out ``eval/pairwise_accuracy``, ``eval/margin`` (mean chosen − rejected score),
    ``eval/chosen_score``, ``eval/rejected_score`` and, for generated pairs, the accuracy on
    each kind of rejected response (``eval/pairwise_accuracy/<kind>``). Under several ranks
    each scores its block of the pairs (under FSDP2 with the whole weights: ranks run different
    numbers of forwards) and the scores are gathered. Every rank must call it."""
    model = unwrap(rm)
    was_training = model.training
    model.eval()
    mine = shard(len(pairs), ranks, even=False)
    parts = [torch.empty(0, 2)]
    with full_weights(rm):
        for i in range(mine.start, mine.stop, batch_pairs):
            batch = pairs[i : min(i + batch_pairs, mine.stop)]
            parts.append(torch.stack(pair_scores(model, batch, pad_id), -1).cpu())
    model.train(was_training)
    scores = torch.cat(all_gather_objects(torch.cat(parts), ranks))
    c, r = scores[:, 0], scores[:, 1]
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
    rm: torch.nn.Module,
    tokenizer: Any,
    train_pairs: Sequence[EncodedPair],
    eval_pairs: Sequence[EncodedPair],
) -> int:
    """Train ``rm`` (a :class:`RewardModel`, wrapped by ``wrap_model`` under several ranks) on
    encoded pairs for ``rm.steps`` steps; returns the steps done.

    Logs ``loss/rm``, ``rm/accuracy`` and ``rm/margin`` every step and the held-out metrics of
    :func:`evaluate_rm` at step 0, every ``rm.eval_every`` steps and at the end.
    """
    s, ranks = ctx.cfg.rm, ctx.ranks
    pad_id = tokenizer.pad_token_id
    loop = ctx.loop(rm, tokenizer, s, "rm")

    def train_step(step: int) -> StepOutput:
        step_idx = step_indices(len(train_pairs), s.pairs_per_step, step, ctx.cfg.seed)
        idx = ctx.share(step_idx, "rm.pairs_per_step")
        _, step_pairs = global_counts(0, len(idx), ranks)
        total = 0.0
        gaps = []
        starts = range(0, len(idx), s.micro_batch_pairs)
        for m in starts:
            batch = [train_pairs[i] for i in idx[m : m + s.micro_batch_pairs]]
            with gradient_sync(rm, sync=m == starts[-1]):
                chosen, rejected = pair_scores(rm, batch, pad_id)
                # Weighted by the micro-batch's share: the sum over ranks is the step's mean loss.
                loss = bradley_terry_loss(chosen, rejected, s.margin) * len(batch) / step_pairs
                loss.backward()
            total += loss.item()
            gaps.append((chosen - rejected).detach().cpu())
        total = all_reduce_sum(total, ranks)  # each rank's loss is its share of the step's
        gap = torch.cat(all_gather_objects(torch.cat(gaps), ranks))
        accuracy = _accuracy(gap)
        metrics = {"loss/rm": total, "rm/accuracy": accuracy, "rm/margin": gap.mean().item()}
        return StepOutput(metrics, {"loss": total, "acc": accuracy}, {"pairs": step_pairs})

    return loop.run(
        train_step,
        lambda: evaluate_rm(rm, eval_pairs, pad_id, s.micro_batch_pairs, ranks),
        s.eval_every,
    )


def save_reward_model(
    rm: torch.nn.Module,
    tokenizer: Any,
    path: Path,
    ranks: Ranks,
    rebuild: Callable[[], RewardModel],
) -> None:
    """Rank 0 writes ``rm`` to ``path`` as a plain reward model, LoRA adapters folded in (in
    place: the last use of ``rm``). Under FSDP2 the whole state is gathered from every rank and
    loaded into ``rebuild()``, an unsharded model of the same kind (adapters are merged on
    whole weights). Every rank must call it."""
    if is_sharded(rm):
        whole = full_model_state(rm, ranks)
        if not ranks.is_main:
            return
        plain = rebuild()
        plain.load_state_dict(whole)
    elif not ranks.is_main:
        return
    else:
        plain = unwrap(rm)
    merge_lora(plain).save_pretrained(path)
    tokenizer.save_pretrained(path)


def rm_stage(ctx: RunContext) -> dict[str, Any]:
    """The ``rm`` stage: pairs, training, the saved model (``run_dir/model``) and the
    held-out pairwise accuracy; returns the stage's part of ``summary.json``."""
    cfg, console, resume_from, ranks = ctx.cfg, ctx.console, ctx.resume_from, ctx.ranks
    path = str(resume_from or cfg.model.path)
    data = cfg.rm.data
    # Only generated pairs are made from the task's problems.
    train, held_out = load_splits(cfg.task) if data.source == "generated" else ([], [])
    tokenizer = load_tokenizer(path)
    lora = cfg.model.lora
    # FSDP2 shards a model that arrives on the CPU layer by layer: no device holds it whole
    sharded = ranks.world_size > 1 and cfg.train.parallel == "fsdp"
    cpu = torch.device("cpu")

    def load(device: torch.device) -> RewardModel:
        kind = (cfg.rm.head, cfg.model.dtype, device, cfg.rm.pool, cfg.rm.likelihood)
        if lora is None:
            return load_reward_model(path, *kind)
        # the base weights, then new adapters or the checkpoint's
        return add_lora(load_reward_model(cfg.model.path, *kind), lora, resume_from)

    rm = load(cpu if sharded else ctx.device)
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

    rm = wrap_model(rm, cfg.train.parallel, ranks, ctx.device)
    steps = train_rm(ctx, rm, tokenizer, train_pairs, eval_pairs)
    pad_id, batch = tokenizer.pad_token_id, cfg.rm.micro_batch_pairs
    final = evaluate_rm(rm, eval_pairs, pad_id, batch, ranks)
    # a plain reward model, LoRA or not
    save_reward_model(rm, tokenizer, ctx.run_dir / MODEL_DIR, ranks, lambda: load(cpu))

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
