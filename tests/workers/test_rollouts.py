"""Rollout and reward workers on a local Ray (127.0.0.1 only): they generate and score what the
trainer's process would, keep the weights each round was sent with, also on a worker restarted
after newer weights were pushed, and survive a killed worker with the same result; a reward
share that cannot be computed is NaN, never 0. Each test runs with the weights sent through the
object store and through a gloo broadcast (``distributed.weight_sync``).

The pool's placement group holds every CPU of this Ray (3 workers, 3 CPUs): a replacement
actor can only start in its predecessor's bundle, so the restart tests also show that it does,
and a further reservation is refused after its timeout instead of waiting."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
from rich.console import Console

from reasonrl.config import ConfigError, RunConfig, load_config
from reasonrl.distributed import Ranks
from reasonrl.models import load_model, load_tokenizer
from reasonrl.rewards import score_batch
from reasonrl.rollout import HFEngine
from reasonrl.tasks import load_splits, render_prompt
from reasonrl.workers import RayRollouts, WorkerFailed, reserve, start_ray

GROUP = 4
SEEDS = {0: [3, 17, 21], 1: [8, 40, 2]}  # a step's prompts; 3 groups over 2 workers: 2 + 1


def plan(step: int, round_: int) -> tuple[list[int], list[int]]:
    idx = SEEDS[step]
    return idx, [1000 * step + 10 * round_ + j for j in range(len(idx) * GROUP)]


# collective sync keeps a pushed version in the object store, for a restarted worker, only when
# rounds are sent ahead: these tests dispatch ahead by hand
SYNC = {"object_store": [], "collective": ["rollout.async_steps=1"]}
# What the weights reach the workers by matters to the tests of versions (each runs with both
# ways); the tests of failures run with the default one (a pool each: a pool is slow to start).
BOTH = pytest.mark.parametrize("cfg", list(SYNC), indirect=True)
DEFAULT = pytest.mark.parametrize("cfg", ["object_store"], indirect=True)


@pytest.fixture(scope="module")
def cfg(request: pytest.FixtureRequest) -> RunConfig:
    return load_config(
        "quickstart",
        [
            "model.dtype=float64",
            "task.train_size=64",
            "rollout.max_new_tokens=10",
            "rl.completions_per_prompt=4",
            "rl.micro_batch_completions=4",
            "distributed.backend=ray",
            "rollout.workers=2",
            "rewards.workers=1",
            f"distributed.weight_sync={request.param}",
            *SYNC[request.param],
        ],
    )


@pytest.fixture(scope="module")
def setting(cfg: RunConfig) -> tuple:
    tokenizer = load_tokenizer("bundled")
    model = load_model(cfg.model, torch.device("cpu"))
    train, _ = load_splits(cfg.task)
    prompts = [render_prompt(s, tokenizer, cfg.task.prompt, cfg.task.chat_template) for s in train]
    return model, tokenizer, prompts, train


@pytest.fixture(scope="module")
def workers(
    cfg: RunConfig, setting: tuple, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RayRollouts, Path]]:
    """The pool, and the workers.log its failures go to (read, then emptied, by each test)."""
    import ray

    model, tokenizer, prompts, train = setting
    run_dir = tmp_path_factory.mktemp("ray-run")
    with RayRollouts(
        cfg, model, tokenizer, prompts, train, plan, run_dir, Console(quiet=True)
    ) as pool:
        yield pool, run_dir / "workers.log"
    ray.shutdown()


def reports(log: Path) -> str:
    """What the pool reported since the last call."""
    text = log.read_text() if log.exists() else ""
    log.unlink(missing_ok=True)
    return text


def in_process(cfg: RunConfig, setting: tuple, step: int, model: torch.nn.Module | None = None):
    """What the trainer's own process generates and scores for ``plan(step, 0)``."""
    base, tokenizer, prompts, train = setting
    idx, seeds = plan(step, 0)
    rows = [i for i in idx for _ in range(GROUP)]
    engine = HFEngine(model or base, tokenizer)
    ro = cfg.rollout
    rollout = engine.generate(
        [prompts[i] for i in rows],
        max_new_tokens=ro.max_new_tokens,
        temperature=ro.temperature,
        top_p=ro.top_p,
        top_k=ro.top_k,
        seeds=seeds,
    )
    scored = score_batch(rollout.texts, [train[i] for i in rows], cfg.rewards, None)
    return rollout, scored


def updated(cfg: RunConfig) -> torch.nn.Module:
    """The policy after an update: its weights moved a little, at random."""
    moved = load_model(cfg.model, torch.device("cpu"))
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return moved


@DEFAULT
def test_ray_started_here_listens_on_loopback_only(workers: tuple) -> None:
    start_ray(None, 3)  # joins the running one
    listening = [
        conn.laddr.ip
        for proc in psutil.Process().children(recursive=True)
        for conn in proc.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert listening  # the GCS, the raylet and the workers listen somewhere...
    # ...on loopback alone (gRPC's IPv6 sockets show it as ::ffff:127.0.0.1)
    addresses = {ipaddress.ip_address(ip) for ip in listening}
    assert {getattr(a, "ipv4_mapped", None) or a for a in addresses} == {
        ipaddress.ip_address("127.0.0.1")
    }


@BOTH
def test_workers_generate_and_score_what_the_process_does(
    cfg: RunConfig, setting: tuple, workers: tuple
) -> None:
    pool, log = workers
    rollout, scored, version = pool.gather(0, 0)
    want, want_scored = in_process(cfg, setting, 0)
    assert version == 0 and rollout.texts == want.texts
    assert torch.equal(rollout.completion_ids, want.completion_ids)
    torch.testing.assert_close(rollout.logprobs, want.logprobs, rtol=0, atol=1e-10)
    assert scored.total == want_scored.total
    metrics = pool.metrics()
    assert metrics["workers/rollout-0/tokens_per_s"] > 0
    assert metrics["workers/rollout-1/tokens_per_s"] > 0
    assert metrics["workers/reward-0/completions_per_s"] > 0
    assert metrics["workers/restarts"] == 0 and not reports(log)


@DEFAULT
def test_a_killed_rollout_worker_is_restarted_and_its_share_redone(
    cfg: RunConfig, setting: tuple, workers: tuple
) -> None:
    pool, log = workers
    pool.dispatch(0, 0)
    pool.generators.kill(0)  # in the middle of the round
    rollout, scored, _ = pool.gather(0, 0)
    want, want_scored = in_process(cfg, setting, 0)
    assert rollout.texts == want.texts and scored.total == want_scored.total
    assert pool.metrics()["workers/restarts"] == 1
    text = reports(log)
    assert text.count("failed in") == 1 and "rollout worker 0 failed in generate" in text
    assert "killed by `ray.kill`" in text  # Ray's own account of the death


@BOTH
def test_each_round_keeps_the_weights_it_was_dispatched_with(
    cfg: RunConfig, setting: tuple, workers: tuple
) -> None:
    pool, _ = workers
    model = setting[0]
    moved = updated(cfg)
    pool.dispatch(0, 0)  # before the update: version 0
    pool.push_weights(moved, 1)
    pool.dispatch(1, 0)
    (old, _, v0), (new, _, v1) = pool.gather(0, 0), pool.gather(1, 0)
    assert (v0, v1) == (0, 1)
    assert old.texts == in_process(cfg, setting, 0, model)[0].texts
    assert new.texts == in_process(cfg, setting, 1, moved)[0].texts
    assert new.texts != in_process(cfg, setting, 1, model)[0].texts
    pool.push_weights(model, 2)  # back to the first weights for the tests after this one
    # no round waits on the older versions: kept are the current one and, with async_steps k,
    # the k before it (a checkpoint writes them for the rounds sent ahead)
    assert set(pool.weights) == set(range(2 - cfg.rollout.async_steps, 3))


@BOTH
def test_a_worker_restarted_after_a_push_redoes_a_round_with_its_older_weights(
    cfg: RunConfig, setting: tuple, workers: tuple
) -> None:
    pool, log = workers
    model = setting[0]
    moved = updated(cfg)
    pool.dispatch(0, 0)  # sent ahead from version 2
    pool.push_weights(moved, 3)
    pool.dispatch(1, 0)
    pool.generators.kill(0)  # both rounds' shares are lost with it
    (old, _, v0), (new, _, v1) = pool.gather(0, 0), pool.gather(1, 0)
    assert (v0, v1) == (2, 3)
    assert old.texts == in_process(cfg, setting, 0, model)[0].texts
    assert new.texts == in_process(cfg, setting, 1, moved)[0].texts
    assert "rollout worker 0 failed in generate" in reports(log)
    pool.push_weights(model, 4)  # back to the first weights


@DEFAULT
def test_a_reward_share_that_keeps_failing_is_nan_not_zero(
    cfg: RunConfig, setting: tuple, workers: tuple
) -> None:
    pool, log = workers
    pool.scorers.max_restarts = 0
    try:
        pool.dispatch(0, 0)
        pool.scorers.kill(0)
        _, scored, _ = pool.gather(0, 0)
    finally:
        pool.scorers.max_restarts = cfg.distributed.max_restarts
    # the first worker's share (2 groups) failed and was given up: NaN with status error; the
    # second share's call, lost with the same actor, was sent to its replacement and scored
    lost = 2 * GROUP
    assert all(math.isnan(t) for t in scored.total[:lost])
    assert all(r.score is None and r.status == "error" for r in scored.results["answer"][:lost])
    assert scored.uncomputed("answer") == lost
    assert scored.total[lost:] == in_process(cfg, setting, 0)[1].total[lost:]
    assert "left uncomputed (NaN)" in reports(log)


@DEFAULT
def test_a_rollout_worker_that_keeps_failing_stops_the_step(workers: tuple) -> None:
    pool, log = workers
    pool.generators.max_restarts = 0
    try:
        pool.dispatch(1, 0)
        pool.generators.kill(1)
        with pytest.raises(WorkerFailed, match="rollout worker 1 failed 1 time in a row"):
            pool.gather(1, 0)
    finally:
        pool.generators.max_restarts = 3
    assert "rollout worker 1 failed in generate (gave up)" in reports(log)


@DEFAULT
def test_a_hung_rollout_worker_is_restarted_after_the_call_timeout(
    cfg: RunConfig, setting: tuple, workers: tuple
) -> None:
    import ray

    pool, log = workers
    pool.dispatch(0, 0)
    hung = psutil.Process(ray.get(pool.generators.pids[0]))
    hung.suspend()  # SIGSTOP: alive to Ray, but it never answers
    pool.generators.timeout = 10.0
    try:
        rollout, scored, _ = pool.gather(0, 0)
    finally:
        pool.generators.timeout = cfg.distributed.call_timeout_s
    assert rollout.texts == in_process(cfg, setting, 0)[0].texts
    assert not hung.is_running() or hung.status() == psutil.STATUS_ZOMBIE  # killed, not left
    text = reports(log)
    assert "rollout worker 0 failed in generate (restarted it, redoing its share)" in text
    assert "no answer within distributed.call_timeout_s=10 s" in text


@DEFAULT
def test_workers_that_find_no_room_stop_the_start_with_a_message(workers: tuple) -> None:
    import ray

    pool, _ = workers
    assert ray.available_resources().get("CPU", 0.0) == 0  # the pool's group holds them all
    with pytest.raises(
        ConfigError, match=r"rank 0.s 1 workers \(holding 1 CPUs.* within distributed.placement"
    ):
        reserve([{"CPU": 1.0}], 2.0, Ranks())
    states = {g["state"] for g in ray.util.placement_group_table().values()}
    assert "PENDING" not in states  # the refused group was removed, not left waiting
    # rollout workers on GPUs, where the cluster has none (this machine), are refused at start
    with pytest.raises(ConfigError, match=r"hold 1 GPUs .* but the Ray cluster has 0"):
        start_ray(None, 1.0, Ranks(), gpus=1.0)
