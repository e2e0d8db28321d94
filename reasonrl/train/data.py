"""Deterministic batch order and mini-batches: which examples step k uses and the mini-batch
each completion trains in depend only on (seed, k) and the completion's row in the step (the
seed each completion is drawn with: ``rollout.sampling.completion_seeds``).

That makes the data position of a checkpoint just its step number, and a resumed run sees
exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import torch

from reasonrl.config import RunConfig
from reasonrl.rollout.sampling import completion_seeds, derive_seed


def step_indices(num_items: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the ``per_step`` items for ``step``: consecutive slices of a stream of
    per-epoch shuffles of ``range(num_items)``."""
    start = step * per_step
    out: list[int] = []
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), num_items)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(num_items, generator=gen).tolist()
        out.extend(perm[offset : offset + per_step - len(out)])
    return out


def round_plan(
    cfg: RunConfig, num_samples: int, step: int, round_: int
) -> tuple[list[int], list[int]]:
    """The prompts (dataset indices) step ``step`` draws in its generation round ``round_``, and
    the seed of each of their completions (``rl.completions_per_prompt`` each, in order): from
    (seed, step, round) alone, so resume is exact and any rank or Ray worker drawing completion i
    draws the same one. Round k > 0 draws from its own stream."""
    idx = step_indices(num_samples, cfg.rl.prompts_per_step, step, cfg.seed + 7919 * round_)
    return idx, completion_seeds(cfg.seed, step, idx, cfg.rl.completions_per_prompt, round_)


def mini_batches(
    rows: range, n_mini: int, shuffle: tuple[int, int, int] | None = None
) -> list[list[int]]:
    """Which of ``rows`` (global row numbers of a step's completions; a rank's contiguous block)
    each of the step's ``n_mini`` mini-batches holds, as indices into ``rows``, ascending.

    The rows are cut into aligned blocks of ``n_mini`` (rows k·n_mini … k·n_mini + n_mini − 1);
    each block gives one row to every mini-batch: row j to mini-batch j mod n_mini (strided), or
    with ``shuffle`` = (seed, step, epoch) to mini-batch perm_k[j mod n_mini], perm_k a
    permutation seeded by (seed, step, epoch, k). Both are functions of the global row alone,
    so a mini-batch of one process is the union of every rank's, when each rank's block holds
    whole blocks of ``n_mini`` (a partial last block, one process only, leaves some
    mini-batches a row short).
    """
    out: list[list[int]] = [[] for _ in range(n_mini)]
    perm: list[int] = []
    for j in rows:
        block, i = divmod(j, n_mini)
        if shuffle is not None:
            if i == 0 or j == rows.start:
                gen = torch.Generator().manual_seed(derive_seed("mini_batch", *shuffle, block))
                perm = torch.randperm(n_mini, generator=gen).tolist()
            i = perm[i]
        out[i].append(j - rows.start)
    return out
