"""Deterministic batch order and sampling seeds: which examples step k uses, and the seed each
of its completions is drawn with, depend only on (seed, k) and the example.

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
