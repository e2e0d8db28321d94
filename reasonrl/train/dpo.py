"""Direct preference optimisation (DPO, or IPO with ``dpo.loss_type=ipo``) on chosen/rejected
pairs, against the frozen starting model as the reference.

CPU: ``reasonrl run tiny-dpo`` (the bundled model on generated chain_sum pairs, minutes).
One GPU: the same; ``model.lora={r: 16}`` trains adapters only.

The reference never changes, so its log-probs of every pair are computed once, from the model
before its first update (under LoRA the new adapters are zero, so that is the adapter-disabled
base), and stored in each checkpoint: no second copy of the weights is kept, and a resumed run
uses exactly the reference the interrupted one did. One step: ``pairs_per_step`` pairs in
micro-batches whose rows are ``[chosen…, rejected…]`` behind a shared prompt; the per-pair
losses are summed and divided by the step's pairs (so accumulation does not change the loss).
Several processes: each rank takes its block of the step's pairs and divides by the pairs of
every rank; the step's metrics are computed from every rank's scores, gathered.
Leaves out: the reference-free and length-normalised variants (SimPO, ORPO), label smoothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from reasonrl.algos import dpo_loss
from reasonrl.distributed import all_gather_objects, all_reduce_sum, global_counts, gradient_sync
from reasonrl.models.forward import completion_logprobs
from reasonrl.tasks.preferences import EncodedPair
from reasonrl.train.context import RunContext, StepOutput
from reasonrl.train.data import step_indices
from reasonrl.train.sft import pack_pairs


def pair_logprobs(
    model: torch.nn.Module, pairs: Sequence[EncodedPair], pad_id: int, pack_tokens: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs (sums over response tokens) of each pair's responses, in one forward
    pass over rows ``[chosen…, rejected…]``. → (chosen [b], rejected [b])."""
    device = next(model.parameters()).device
    ids, attn, cmask = pack_pairs(
        [p.prompt for p in pairs] * 2,
        [p.chosen for p in pairs] + [p.rejected for p in pairs],
        pad_id,
    )
    ids, attn, cmask = ids.to(device), attn.to(device), cmask.to(device)
    logp, _ = completion_logprobs(model, ids, attn, cmask.shape[1], pack_tokens=pack_tokens)
    chosen, rejected = (logp * cmask).sum(-1).chunk(2)
    return chosen, rejected


def response_tokens(pairs: Sequence[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
    """Response lengths (IPO averages log-ratios over them). → (chosen [b], rejected [b])."""
    return (
        torch.tensor([len(p.chosen) for p in pairs], dtype=torch.float32),
        torch.tensor([len(p.rejected) for p in pairs], dtype=torch.float32),
    )


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    pairs: Sequence[EncodedPair],
    micro_batch: int,
    pad_id: int,
    pack_tokens: int = 0,
) -> torch.Tensor:
    """Sequence log-probs of every pair in eval mode (no dropout), on the CPU. → [N, 2]
    (column 0 chosen, 1 rejected)."""
    was_training = model.training
    model.eval()
    parts = [
        torch.stack(
            pair_logprobs(model, pairs[m : m + micro_batch], pad_id, pack_tokens), dim=-1
        ).cpu()
        for m in range(0, len(pairs), micro_batch)
    ]
    model.train(was_training)
    return torch.cat(parts).float()


def pair_metrics(
    policy: torch.Tensor,
    ref: torch.Tensor,
    pairs: Sequence[EncodedPair],
    beta: float,
    loss_type: str,
) -> dict[str, float]:
    """Mean loss, reward accuracy (β·Δ_chosen > β·Δ_rejected) and margin — how much more the
    policy prefers chosen over rejected than the reference did, in nats — of scored pairs.
    policy, ref: [N, 2] sequence log-probs (chosen, rejected)."""
    nc, nr = response_tokens(pairs)
    (pc, pr), (rc, rr) = policy.unbind(-1), ref.unbind(-1)
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta, loss_type, nc, nr)
    return {
        "loss": float(loss.mean()),
        "margin": float(((chosen - rejected) / beta).mean()),
        "reward_accuracy": float((chosen > rejected).float().mean()),
    }


def train_dpo(
    ctx: RunContext,
    model: torch.nn.Module,
    tokenizer: Any,
    train_pairs: Sequence[EncodedPair],
    eval_pairs: Sequence[EncodedPair],
) -> int:
    """Train ``model`` on ``train_pairs``; held-out metrics on ``eval_pairs`` every
    ``dpo.eval_every`` steps and at the end. Returns the number of steps done."""
    d = ctx.cfg.dpo
    pad, pack = tokenizer.pad_token_id, ctx.cfg.model.pack_tokens
    loop = ctx.loop(model, tokenizer, d, f"dpo ({d.loss_type})")
    if ctx.resumed:
        ref_train, ref_eval = loop.resumed_extra["ref_train"], loop.resumed_extra["ref_eval"]
        if (len(ref_train), len(ref_eval)) != (len(train_pairs), len(eval_pairs)):
            raise ValueError(f"{ctx.resume_from} was trained on other preference pairs")
    else:  # the model before its first update is the reference
        ref_train = score_pairs(model, train_pairs, d.micro_batch_pairs, pad, pack)
        ref_eval = score_pairs(model, eval_pairs, d.micro_batch_pairs, pad, pack)
    loop.checkpointer.extra = {"ref_train": ref_train, "ref_eval": ref_eval}  # every checkpoint

    def held_out() -> dict[str, float]:
        policy = score_pairs(model, eval_pairs, d.micro_batch_pairs, pad, pack)
        stats = pair_metrics(policy, ref_eval, eval_pairs, d.beta, d.loss_type)
        return {f"eval/dpo_{k}": v for k, v in stats.items()}

    def train_step(step: int) -> StepOutput:
        step_idx = step_indices(len(train_pairs), d.pairs_per_step, step, ctx.cfg.seed)
        idx = ctx.share(step_idx, "dpo.pairs_per_step")
        policy_rows, tokens = [], 0
        total = 0.0
        starts = range(0, len(idx), d.micro_batch_pairs)
        _, step_pairs = global_counts(0, len(idx), ctx.ranks)
        for m in starts:
            rows = idx[m : m + d.micro_batch_pairs]
            pairs = [train_pairs[i] for i in rows]
            with gradient_sync(model, sync=m == starts[-1]):
                pc, pr = pair_logprobs(model, pairs, pad, pack)
                ref = ref_train[rows].to(pc.device)
                nc, nr = (n.to(pc.device) for n in response_tokens(pairs))
                loss, _, _ = dpo_loss(pc, pr, ref[:, 0], ref[:, 1], d.beta, d.loss_type, nc, nr)
                loss = loss.sum() / step_pairs
                loss.backward()
            total += loss.item()
            policy_rows.append(torch.stack([pc, pr], dim=-1).detach().float().cpu())
            tokens += int(nc.sum() + nr.sum())
        total = all_reduce_sum(total, ctx.ranks)  # each rank's loss is its share of the step's
        tokens = all_reduce_sum(tokens, ctx.ranks)
        scored = torch.cat(all_gather_objects(torch.cat(policy_rows), ctx.ranks))
        batch = [train_pairs[i] for i in step_idx]
        stats = pair_metrics(scored, ref_train[step_idx], batch, d.beta, d.loss_type)
        metrics = {
            "loss/dpo": total,
            "dpo/reward_accuracy": stats["reward_accuracy"],
            "dpo/margin": stats["margin"],
        }
        progress = {"loss": total, "acc": stats["reward_accuracy"]}
        return StepOutput(metrics, progress, {"tokens": tokens})

    return loop.run(train_step, held_out if eval_pairs else None, d.eval_every)
