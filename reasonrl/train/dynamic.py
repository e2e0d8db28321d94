"""DAPO's dynamic sampling on any number of ranks: which groups a step keeps, and which of them
each rank trains on.

One process keeps, round by round, the first groups whose valid rewards differ (in the round's
prompt order) until it has ``rl.prompts_per_step``. Ranks generate contiguous blocks of each
round's groups and see only their own rewards, so they would keep different numbers of groups
and run different numbers of forwards and backwards (DDP and FSDP2 then hang). Here
``keep_with_signal`` exchanges the round's per-group flags (a few booleans) so every rank keeps
the groups one process keeps, and ``kept_batch`` gathers the kept groups (on the CPU), lays them
out in one process's order and gives each rank its block of them (``distributed.shard``): the
training rows are one process's, split as every other step's are.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from reasonrl.config import RunConfig
from reasonrl.distributed import Ranks, all_gather_objects, shard
from reasonrl.train.records import ScoredBatch, concat_scored
from reasonrl.train.update import splits_evenly


def has_signal(group_rewards: torch.Tensor) -> bool:
    """Whether a group's valid (non-NaN) rewards differ: else its advantages are all zero."""
    valid = group_rewards[~torch.isnan(group_rewards)]
    return valid.numel() > 1 and bool((valid != valid[0]).any())


def keep_with_signal(rewards: torch.Tensor, room: int, ranks: Ranks) -> tuple[list[int], int]:
    """Of a round's groups, the first ``room`` with signal over every rank, in the round's
    order: (this rank's among them, as indices into its block; how many over every rank).
    rewards: [p, G], this rank's block of the round's groups."""
    flags = all_gather_objects([has_signal(g) for g in rewards], ranks)
    start = sum(len(part) for part in flags[: ranks.rank])
    chosen = [g for g, f in enumerate(f for part in flags for f in part) if f][:room]
    return [g - start for g in chosen if start <= g < start + len(rewards)], len(chosen)


def kept_batch(
    cfg: RunConfig, kept: list[ScoredBatch], last: ScoredBatch, pad_id: int, ranks: Ranks
) -> ScoredBatch:
    """The batch a dynamic-sampling step trains on, this rank's share: ``kept`` holds this
    rank's kept groups of each round, ``last`` its block of the last round's groups.

    Several ranks need equal blocks of whole mini-batch blocks (``update.splits_evenly``): when
    fewer groups than ``rl.prompts_per_step`` were kept and they do not split so, the last kept
    ones (latest round, last in order) are left out, as few as can be, and counted in
    ``ScoredBatch.dropped`` (``sampling/dropped_groups``); one process trains on all it kept.
    When nothing is left (nothing kept, or fewer groups than ranks), the step trains on the
    last round as drawn, whose groups without signal have zero advantage."""
    rounds = len(kept)
    if ranks.world_size == 1:
        every = kept
    else:  # the rounds' groups of every rank, in one process's order: round, then rank
        cpu = [part.to(torch.device("cpu")) for part in kept]
        gathered = all_gather_objects(cpu, ranks)
        every = [gathered[r][k] for k in range(rounds) for r in range(ranks.world_size)]
    have = sum(len(part.rewards) for part in every)
    trained = next((n for n in range(have, 0, -1) if splits_evenly(cfg, n, ranks.world_size)), 0)
    if not trained:
        return replace(last, rounds=rounds, dropped=have)
    batch = concat_scored(every, pad_id, rounds)
    if ranks.world_size > 1:
        mine = shard(trained, ranks)
        device = kept[0].rollout.prompt_ids.device
        batch = batch.groups(list(mine)).to(device)
    return replace(batch, dropped=have - trained)
