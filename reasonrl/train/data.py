"""Deterministic batch order: which examples step k uses depends only on (seed, k).

That makes the data position of a checkpoint just its step number, and a resumed run sees
exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

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
