"""Supervised fine-tuning (the cold-start stage): next-token loss on completion tokens only.

CPU: ``reasonrl run recipes/tiny-cold-start.yaml`` trains the bundled model from scratch.
GPU: the same command; ``model.device=auto`` picks CUDA. ``model.lora`` trains adapters only
(reasonrl.models.lora; the optimizer sees only parameters that require grad). Several processes
(``torchrun --nproc-per-node N -m reasonrl run ...``): each rank trains on its block of the step's
examples, the loss is divided by the step's tokens over all ranks, so the summed gradient equals
one process's. A completion's tool answers (``<result>…</result>``, ``reasonrl.envs.protocol``)
are context, as in an RL episode: tokenized on their own, and neither trained on nor counted.
Leaves out: packing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from reasonrl.algos import sft_loss
from reasonrl.distributed import all_reduce_sum, global_counts, gradient_sync
from reasonrl.envs.protocol import RESULT_CLOSE, RESULT_OPEN, result_ids
from reasonrl.models.forward import completion_logprobs
from reasonrl.train.context import RunContext, StepOutput
from reasonrl.train.data import step_indices


def pack_pairs(
    prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay out (prompt, completion) id lists as ``[prompt left-padded | completion right-padded]``.

    Returns input_ids [B, P + C], attention_mask [B, P + C], completion_mask [B, C].
    """
    p = max(len(x) for x in prompts)
    c = max(len(x) for x in completions)
    ids = torch.full((len(prompts), p + c), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, (pr, co) in enumerate(zip(prompts, completions, strict=True)):
        ids[i, p - len(pr) : p] = torch.tensor(pr)
        ids[i, p : p + len(co)] = torch.tensor(co)
        attn[i, p - len(pr) : p + len(co)] = 1
    return ids, attn, attn[:, p:].clone()


_RESULT_RE = re.compile(f"{re.escape(RESULT_OPEN)}(.*?){re.escape(RESULT_CLOSE)}", re.DOTALL)


def encode_completion(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """A completion's token ids, and 1 on the tokens the model writes, 0 on its tool answers'.

    The text is cut at each ``<result>…</result>`` and every piece tokenized on its own, as an
    episode is built (the model's turn, then the tool's answer appended as ``result_ids``
    makes it), so the trained tokens are the ones the model would sample there."""
    ids: list[int] = []
    trained: list[int] = []
    for k, piece in enumerate(_RESULT_RE.split(text)):
        if k % 2:  # odd pieces: what a result holds
            piece_ids = result_ids(tokenizer, piece)
        elif piece:
            piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        else:
            continue
        ids += piece_ids
        trained += [1 - k % 2] * len(piece_ids)
    return ids, trained


def train_sft(
    ctx: RunContext, model: torch.nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]]
) -> int:
    """Train on (prompt, completion) text pairs; returns the number of steps done.

    Completions get the tokenizer's EOS appended, so the model learns to stop; their tool
    answers are not trained on (:func:`encode_completion`).
    """
    s, seed, ranks = ctx.cfg.sft, ctx.cfg.seed, ctx.ranks
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    enc_prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    enc_completions, trained = [], []
    for _, completion in pairs:
        ids, mask = encode_completion(tokenizer, completion)
        enc_completions.append(ids + [eos])
        trained.append(mask + [1])
    loop = ctx.loop(model, tokenizer, s, "sft")

    def train_step(step: int) -> StepOutput:
        step_idx = step_indices(len(pairs), s.examples_per_step, step, seed)
        idx = ctx.share(step_idx, "sft.examples_per_step")
        step_tokens, _ = global_counts(sum(sum(trained[i]) for i in idx), len(idx), ranks)
        total = 0.0
        starts = range(0, len(idx), s.micro_batch_examples)
        for m in starts:
            rows = idx[m : m + s.micro_batch_examples]
            ids, attn, present = pack_pairs(
                [enc_prompts[i] for i in rows],
                [enc_completions[i] for i in rows],
                tokenizer.pad_token_id,
            )
            width = present.shape[1]
            # the loss is on the tokens the model writes: present and not a tool's answer
            trained_mask = [trained[i] + [0] * (width - len(trained[i])) for i in rows]
            ids, attn = ids.to(device), attn.to(device)
            cmask = torch.tensor(trained_mask, device=device)
            with gradient_sync(model, sync=m == starts[-1]):
                logp, _ = completion_logprobs(
                    model, ids, attn, width, pack_tokens=ctx.cfg.model.pack_tokens
                )
                loss = sft_loss(logp, cmask, step_tokens)
                loss.backward()
            total += loss.item()
        total = all_reduce_sum(total, ranks)  # each rank's loss is its share of the step's
        return StepOutput({"loss/sft": total}, {"loss": total}, {"tokens": step_tokens})

    return loop.run(train_step)
