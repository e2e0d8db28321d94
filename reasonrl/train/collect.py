"""The ``collect`` phase of an RL step: a step's completions, generated round by round and
scored, as the ``ScoredBatch`` the other phases read.

Each rank generates a contiguous block of whole groups, each completion with its own seed
(``data.round_plan``), so any split draws the same completions; Ray's workers generate and score
the rank's block instead when the run has them (``reasonrl.workers``; each rank its own).

DAPO's dynamic sampling on any number of ranks: one process keeps, round by round, the first
groups whose valid rewards differ (in the round's prompt order) until it has
``rl.prompts_per_step``. Ranks see only their own block's rewards, so they would keep different
numbers of groups and run different numbers of forwards and backwards (DDP and FSDP2 then hang).
``keep_with_signal`` exchanges the round's per-group flags (a few booleans) so every rank keeps
the groups one process keeps, and ``kept_batch`` gathers the kept groups (on the CPU), lays them
out in one process's order and gives each rank its block of them (``distributed.shard``): the
training rows are one process's, split as every other step's are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from reasonrl.config import RunConfig
from reasonrl.distributed import Ranks, all_gather_objects, shard
from reasonrl.envs import ToolUse
from reasonrl.rewards import ScoredBatch as Scores
from reasonrl.rewards import score_batch
from reasonrl.rollout.base import Rollout, RolloutEngine
from reasonrl.tasks.base import Sample
from reasonrl.train.data import round_plan
from reasonrl.train.records import ScoredBatch, concat_scored
from reasonrl.train.update import splits_evenly
from reasonrl.workers import RayRollouts

ONE_PROCESS = Ranks()


def score(
    cfg: RunConfig, rollout: Rollout, samples: list[Sample], scored: Scores | None = None
) -> ScoredBatch:
    """Every reward term of ``cfg.rewards`` on each completion (``samples[i]`` its problem;
    an episode graded on what the model wrote, its trajectory passed to the verifiers that take
    one); ``scored``: those a reward worker computed."""
    if scored is None:
        lengths = rollout.lengths.tolist()
        scored = score_batch(rollout.texts, samples, cfg.rewards, lengths, rollout.episodes)
    rows = range(len(samples))
    return ScoredBatch(
        rollout,
        samples,
        torch.tensor(scored.total, dtype=torch.float32).view(-1, cfg.rl.completions_per_prompt),
        scored.components,
        {name: [scored.uncomputed(name, [i]) == 1 for i in rows] for name in scored.components},
    )


def collect(
    cfg: RunConfig,
    engine: RolloutEngine,
    prompts: Sequence[str],
    samples: Sequence[Sample],
    step: int,
    ranks: Ranks = ONE_PROCESS,
    remote: RayRollouts | None = None,
    tools: ToolUse | None = None,
) -> ScoredBatch:
    """Generate and score the step's groups (this rank's block of them; completion i with the
    seed ``completion_seeds`` gives it in the whole step). With ``algo.dynamic_sampling`` (DAPO),
    groups whose valid rewards are all equal carry no signal: they are dropped and more prompts
    drawn, up to ``algo.max_sampling_rounds`` rounds; the step then trains on the groups it
    has, dealt evenly to the ranks (``kept_batch``). ``remote``: Ray's rollout and reward
    workers do both (``reasonrl.workers``); the batch records how many updates old the
    weights that generated it are (``staleness``). ``tools``: each completion is an episode
    (``rollout.max_turns``) with its own toolbox."""
    ro, algo = cfg.rollout, cfg.algo
    group, want = cfg.rl.completions_per_prompt, cfg.rl.prompts_per_step
    kept: list[ScoredBatch] = []
    have = 0
    for round_ in range(algo.max_sampling_rounds if algo.dynamic_sampling else 1):
        idx, seeds = rank_round(cfg, len(samples), step, round_, ranks)
        rows = [samples[i] for i in idx for _ in range(group)]
        if remote is not None:  # this rank's Ray workers: its block, generated
            rollout, scores, version = remote.gather(step, round_)  # from weights `version`
            scored = replace(score(cfg, rollout, rows, scores), staleness=step - version)
        else:
            episodes, texts = {}, [prompts[i] for i in idx for _ in range(group)]
            if tools is not None:  # a fresh environment per completion, reset to its problem
                texts, episodes = tools.generate_args(rows, engine.tokenizer, cfg.task)
            rollout = engine.generate(
                texts,
                max_new_tokens=ro.max_new_tokens,
                temperature=ro.temperature,
                top_p=ro.top_p,
                top_k=ro.top_k,
                seeds=seeds,
                **episodes,
            )
            scored = score(cfg, rollout, rows)
        if not algo.dynamic_sampling:
            return scored
        keep, kept_here = keep_with_signal(scored.rewards, want - have, ranks)
        kept.append(scored.groups(keep))
        have += kept_here
        if have >= want:
            break
    return kept_batch(cfg, kept, scored, engine.pad_id, ranks)


def rank_round(
    cfg: RunConfig, n_samples: int, step: int, round_: int, ranks: Ranks = ONE_PROCESS
) -> tuple[list[int], list[int]]:
    """This rank's block of generation round ``round_`` of ``step`` (``data.round_plan``): its
    prompts' indices, and the seeds of their completions (``rl.completions_per_prompt`` each)."""
    every, seeds = round_plan(cfg, n_samples, step, round_)
    mine, group = shard(len(every), ranks), cfg.rl.completions_per_prompt
    return every[mine.start : mine.stop], seeds[mine.start * group : mine.stop * group]


# ----------------------------------------------------- DAPO's dynamic sampling over ranks


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
