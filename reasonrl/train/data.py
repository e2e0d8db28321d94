"""Deterministic batch order, sampling seeds and mini-batches: which examples step k uses, the
seed each of its completions is drawn with, and the mini-batch each completion trains in,
depend only on (seed, k) and the example (or the completion's row in the step).

That makes the data position of a checkpoint just its step number, and a resumed run sees
exactly the batches the uninterrupted run would have seen. Seeds keyed by the example, not by
the rank or the row, let ranks split a step's prompts and still draw the completions one
process would (``RolloutEngine.generate(..., seeds=)``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


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


def _derive(*key: str | int) -> int:
    """A 63-bit seed from a key: BLAKE2b of its text, the same in every process, platform and
    Python version (``hash()`` is salted per process for strings)."""
    text = ":".join(str(part) for part in key).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def completion_seeds(
    seed: int, step: int, prompt_indices: Sequence[int], group: int, sampling_round: int = 0
) -> list[int]:
    """The seeds of a step's completions, laid out as the trainer repeats its prompts: for each
    index in ``prompt_indices`` (dataset indices, as ``step_indices`` returns), ``group`` seeds
    in a row. Seed (i, j) is a function of (run seed, step, sampling round, dataset index, j)
    only. An index drawn twice in one step (an epoch boundary) gets fresh seeds for its second
    group: pass the step's whole index list, then take a rank's rows from the result."""
    seen: dict[int, int] = {}
    out: list[int] = []
    for index in prompt_indices:
        repeat = seen.get(index, 0)
        seen[index] = repeat + 1
        out += [
            _derive("train", seed, step, sampling_round, index, repeat, j) for j in range(group)
        ]
    return out


def eval_seeds(seed: int, problem_indices: Sequence[int], k: int) -> list[int]:
    """The seeds of pass@k samples, ``k`` per problem in a row: sample j of problem i is a
    function of (seed, i, j). The before and after evaluations of a run draw with the same
    seeds, so their difference is the weights', not the noise's."""
    return [_derive("eval", seed, i, j) for i in problem_indices for j in range(k)]


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
                gen = torch.Generator().manual_seed(_derive("mini_batch", *shuffle, block))
                perm = torch.randperm(n_mini, generator=gen).tolist()
            i = perm[i]
        out[i].append(j - rows.start)
    return out
