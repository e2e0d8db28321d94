"""DAPO's dynamic sampling over ranks (train/collect.py), with two ranks simulated in one
process: the groups kept and their order are one process's; when the kept groups do not split
evenly, the last ones are left out and counted (two ranks == one process is
tests/distributed/test_rl_ranks.py)."""

from dataclasses import replace

import pytest
import torch

from reasonrl.config import RewardSpec, load_config
from reasonrl.distributed import Ranks
from reasonrl.rollout.base import Rollout
from reasonrl.tasks.base import Sample
from reasonrl.train import collect
from reasonrl.train.records import ScoredBatch

G = 2
CFG = load_config(
    "quickstart",
    ["algo.name=dapo", "rl.prompts_per_step=4", f"rl.completions_per_prompt={G}"]
    + ["rl.micro_batch_completions=2"],
)


def _block(names: list[str], signal: list[bool]) -> ScoredBatch:
    """A rank's block of a round: one group per name, rewards differing where ``signal``."""
    b = len(names) * G
    rollout = Rollout(
        torch.ones(b, 3, dtype=torch.long),
        torch.ones(b, 3, dtype=torch.long),
        torch.ones(b, 2, dtype=torch.long),
        torch.ones(b, 2, dtype=torch.long),
        torch.zeros(b, 2),
        [f"{n}/{j}" for n in names for j in range(G)],
        torch.ones(b, dtype=torch.bool),
    )
    rewards = torch.tensor([[0.0, float(s)] for s in signal])
    samples = [Sample(n, "0") for n in names for _ in range(G)]
    return ScoredBatch(rollout, samples, rewards, {"answer": [0.0] * b}, {"answer": [False] * b})


def _two_ranks(monkeypatch, rounds: list[list[ScoredBatch]]) -> list[ScoredBatch]:
    """Each rank's batch after ``rounds`` (per round, each rank's block), both ranks' exchanges
    answered with what the other rank would send."""
    kept: list[list[ScoredBatch]] = [[], []]
    have = 0
    for blocks in rounds:
        flags = [[collect.has_signal(g) for g in b.rewards] for b in blocks]
        monkeypatch.setattr(collect, "all_gather_objects", lambda obj, ranks, f=flags: f)
        for rank, block in enumerate(blocks):
            keep, n = collect.keep_with_signal(block.rewards, 4 - have, Ranks(rank, 2, 0))
            kept[rank].append(block.groups(keep))
        have += n
    monkeypatch.setattr(collect, "all_gather_objects", lambda obj, ranks: kept)
    return [
        collect.kept_batch(CFG, kept[rank], rounds[-1][rank], 0, Ranks(rank, 2, 0))
        for rank in range(2)
    ]


def _names(batch: ScoredBatch) -> list[str]:
    return [s.prompt for s in batch.samples[::G]]


def test_kept_groups_are_dealt_in_one_process_order(monkeypatch):
    rounds = [
        [_block(["a", "b"], [True, False]), _block(["c", "d"], [True, True])],
        [_block(["e", "f"], [True, True]), _block(["g", "h"], [True, False])],
    ]
    first, second = _two_ranks(monkeypatch, rounds)
    # one process keeps a, c, d (round 1), then e: rank 0 trains a, c and rank 1 d, e
    assert (_names(first), _names(second)) == (["a", "c"], ["d", "e"])
    assert first.rounds == second.rounds == 2 and first.dropped == second.dropped == 0


def test_kept_groups_that_do_not_split_evenly_lose_the_last(monkeypatch):
    rounds = [
        [_block(["a", "b"], [True, False]), _block(["c", "d"], [False, True])],
        [_block(["e", "f"], [False, False]), _block(["g", "h"], [False, True])],
    ]
    first, second = _two_ranks(monkeypatch, rounds)
    # a, d, h kept: two ranks train a and d; h, the last kept, is left out and counted
    assert (_names(first), _names(second)) == (["a"], ["d"])
    assert first.dropped == second.dropped == 1


@pytest.mark.parametrize("signal", [[False, False, False, True], [False] * 4])
def test_too_few_kept_groups_train_the_last_round_as_drawn(monkeypatch, signal):
    rounds = [
        [_block(["a", "b"], signal[:2]), _block(["c", "d"], signal[2:])],
        [_block(["e", "f"], [False, False]), _block(["g", "h"], [False, False])],
    ]
    first, second = _two_ranks(monkeypatch, rounds)
    assert (_names(first), _names(second)) == (["e", "f"], ["g", "h"])
    assert first.dropped == second.dropped == sum(signal)
    assert first.rounds == 2


def test_score_grades_an_episode_on_the_models_turns_and_charges_its_calls():
    from reasonrl.rollout import Episode

    cost = RewardSpec(verifier="tool_calls", weight=-0.5)
    cfg = CFG.model_copy(update={"rewards": {"answer": RewardSpec(), "tool_cost": cost}})
    call = ("model", "<tool>calculator 2+2</tool>")
    episodes = [
        Episode([call, ("tool", "<result><answer>4</answer></result>"), ("model", "")], {"c": 1}),
        Episode([call, ("tool", "<result>4</result>"), ("model", "<answer>4</answer>")], {"c": 1}),
    ]
    rollout = replace(_block(["a"], [True]).rollout, episodes=episodes)
    batch = collect.score(cfg, rollout, [Sample("2+2?", "4")] * 2)
    assert batch.components == {"answer": [0.0, 1.0], "tool_cost": [1.0, 1.0]}
    assert batch.rewards.tolist() == [[-0.5, 0.5]]
