"""GRPO on Ray workers against the trainer's own process: ``train_rl`` for 4 steps of the bundled
model in float64 with ``rollout.workers=2 rewards.workers=1`` writes the metrics of the
in-process run (1e-6) with either way of sending the workers the weights
(``distributed.weight_sync``: the object store, a gloo broadcast), also when a rollout worker is
killed in the middle of the first weights broadcast, another in the middle of step 3 and a reward
worker in the middle of step 4; with
``rollout.async_steps=1`` every batch after the first is one update old, and the first is the
synchronous run's."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from rich.console import Console

from reasonrl.config import load_config
from reasonrl.logging import RunLogger, read_jsonl
from reasonrl.models import load_model, load_tokenizer
from reasonrl.rollout import HFEngine
from reasonrl.tasks import load_splits, render_prompt
from reasonrl.train.context import RunContext
from reasonrl.train.rl import train_rl
from reasonrl.workers import RayRollouts
from reasonrl.workers.weight_sync import Broadcaster

COMMON = [
    "model.dtype=float64",
    "model.device=cpu",
    "task.train_size=64",
    "task.eval_size=4",
    "rl.steps=4",
    "rl.prompts_per_step=4",
    "rl.completions_per_prompt=4",
    "rl.micro_batch_completions=8",
    "rl.learning_rate=1e-3",
    "rl.warmup_steps=0",
    "rollout.max_new_tokens=12",
    # too short to answer: a reward on the length in characters makes the groups differ
    "rewards={answer: 1.0, length: {options: {max_length: 60, unit: chars}}}",
    "log.report_to=none",
    "log.checkpoint_every=0",
]
RAY = ["distributed.backend=ray", "rollout.workers=2", "rewards.workers=1"]
ASYNC = [*RAY, "rollout.async_steps=1", "algo.tis_cap=2.0"]
# timings, what only a Ray run logs, and the engine-trainer mismatch (logged only by a run that
# recomputes its log-probs: with algo.tis_cap)
SKIP = ("perf/", "async/", "workers/", "rollout/")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    import ray

    yield
    ray.shutdown()


def run(out: Path, overrides: list[str], resume_from: Path | None = None) -> list[dict]:
    cfg = load_config("quickstart", COMMON + overrides)
    tokenizer = load_tokenizer("bundled")
    if resume_from is not None:  # the checkpoint's weights, as `reasonrl run --resume` loads
        cfg.model.path = str(resume_from)
    model = load_model(cfg.model, torch.device("cpu"))
    train, _ = load_splits(cfg.task)
    prompts = [render_prompt(s, tokenizer, cfg.task.prompt, cfg.task.chat_template) for s in train]
    with RunLogger(out, report_to=[]) as logger:
        ctx = RunContext(cfg, out, logger, console=Console(quiet=True), resume_from=resume_from)
        train_rl(ctx, model, None, tokenizer, HFEngine(model, tokenizer), prompts, train)
    return list(read_jsonl(out / "metrics.jsonl"))


def assert_same_metrics(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        keys = {k for k in w if not k.startswith(SKIP)}
        assert keys == {k for k in g if not k.startswith(SKIP)}
        for k in keys:
            if w[k] is None:  # NaN, as metrics.jsonl writes it
                assert g[k] is None, k
            else:
                assert g[k] == pytest.approx(w[k], rel=1e-6, abs=1e-6), (w["step"], k)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run(tmp_path_factory.mktemp("in-process"), [])


def test_synchronous_ray_writes_the_in_process_metrics(
    in_process: list[dict], tmp_path: Path
) -> None:
    # the object store sends the weights here; the killed-workers test below sends them by a
    # gloo broadcast and holds its run to the same metrics
    got = run(tmp_path, [*RAY, "distributed.weight_sync=object_store"])
    assert len(got) == 4
    assert_same_metrics(got, in_process)
    assert all(row["async/staleness"] == 0 for row in got)
    assert all(row["workers/restarts"] == 0 for row in got)
    assert all(row["workers/rollout-1/tokens_per_s"] > 0 for row in got)
    assert not (tmp_path / "workers.log").exists()  # nothing failed


def test_workers_killed_mid_step_leave_the_metrics_unchanged(
    in_process: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    # collective sync: a replacement gets its weights through the object store, then rejoins
    # the group at the next push, so this one run covers both ways of sending weights
    faults = {2: ("generators", 0), 3: ("scorers", 0)}  # step 3: a rollout worker; step 4: reward
    dispatch = RayRollouts.dispatch

    def dispatch_then_kill(self: RayRollouts, step: int, round_: int) -> None:
        fresh = (step, round_) not in self.rounds
        dispatch(self, step, round_)
        if fresh and step in faults:  # the round's calls are in flight
            kind, index = faults[step]
            getattr(self, kind).kill(index)

    # and rollout worker 1 killed after the first 1 MB bucket of the first update's weights:
    # that version reaches worker 0 through the object store, and worker 1 is replaced when
    # step 2 calls it
    monkeypatch.setattr("reasonrl.distributed.groups.BUCKET_BYTES", 1 << 20)
    push, send, members = Broadcaster.push, Broadcaster._send, []

    def push_recording(self: Broadcaster, actors: list, *args: object) -> None:
        members.append(list(actors))
        push(self, actors, *args)

    def send_then_kill(self: Broadcaster, flat: torch.Tensor) -> None:
        send(self, flat)
        if len(members) == 1 and len(members[0]) == 2:  # the first push's first bucket
            ray.kill(members[0].pop(1), no_restart=True)

    monkeypatch.setattr(RayRollouts, "dispatch", dispatch_then_kill)
    monkeypatch.setattr(Broadcaster, "push", push_recording)
    monkeypatch.setattr(Broadcaster, "_send", send_then_kill)
    got = run(tmp_path, [*RAY, "distributed.weight_sync=collective"])
    assert_same_metrics(got, in_process)
    assert [row["workers/restarts"] for row in got] == [0, 1, 2, 3]
    log = (tmp_path / "workers.log").read_text()
    assert "weights version 1 did not reach every worker" in log
    assert "rollout worker 1 failed in generate" in log
    assert "rollout worker 0 failed in generate" in log and "reward worker 0 failed in score" in log


@pytest.fixture(scope="module")
def async_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    """Four steps with ``rollout.async_steps=1``, a checkpoint after step 2."""
    out = tmp_path_factory.mktemp("async")
    return run(out, [*ASYNC, "log.checkpoint_every=2"]), out


def test_async_rollouts_are_one_update_old(
    in_process: list[dict], async_run: tuple[list[dict], Path]
) -> None:
    got, _ = async_run
    assert [row["async/staleness"] for row in got] == [0, 1, 1, 1]
    # step 1 is generated before any update: it is the synchronous run's step 1
    assert_same_metrics(got[:1], in_process[:1])
    # later steps sample from older weights than the synchronous run's: other completions
    assert got[1]["reward/mean"] != in_process[1]["reward/mean"]
    assert all(math.isfinite(row["loss/policy"]) for row in got)


def test_a_resumed_async_run_regenerates_the_rounds_sent_ahead_exactly(
    async_run: tuple[list[dict], Path], tmp_path: Path
) -> None:
    # step 3's rollouts were sent ahead during step 2, from the weights after step 1: the
    # checkpoint after step 2 holds them, and the resumed run generates step 3 from them
    full, out = async_run
    checkpoint = tmp_path / "step-2"
    shutil.copytree(out / "checkpoints" / "step-2", checkpoint)
    assert sorted(p.name for p in (checkpoint / "behaviour").iterdir()) == ["version-1.pt"]
    resumed = run(tmp_path / "resumed", ASYNC, resume_from=checkpoint)
    assert [row["step"] for row in resumed] == [3, 4]
    assert_same_metrics(resumed, full[2:])
    assert [row["async/staleness"] for row in resumed] == [1, 1]
    # without those weights step 3 would be generated from the checkpoint's own: other data
    shutil.rmtree(checkpoint / "behaviour")
    # (one step: the loss is computed before the update, whatever the schedule's length)
    regenerated = run(tmp_path / "regenerated", [*ASYNC, "rl.steps=3"], resume_from=checkpoint)
    assert regenerated[0]["loss/policy"] != pytest.approx(full[2]["loss/policy"], rel=1e-6)


def test_ray_workers_run_episodes_with_tools(tmp_path: Path, tool_model: Path) -> None:
    """The rollout workers build each episode's toolbox from its sample and run the tool loop:
    the metrics, tool use included, are the in-process run's."""
    # the model's two habits on this one (tests/conftest.py): a call and 125, or 115 by hand
    row = json.dumps({"prompt": "Add 57 and 68.", "answer": "125"}) + "\n"
    (tmp_path / "train.jsonl").write_text(row * 8)
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": "2"}))
    episodes = [
        f"model.path={tool_model}",
        "task.source=jsonl",
        f"task.train_path={tmp_path / 'train.jsonl'}",
        f"task.eval_path={tmp_path / 'eval.jsonl'}",
        "rl.steps=2",
        "rl.learning_rate=1e-4",
        "rollout.max_turns=3",
        "rollout.tools=[calculator]",
        "rollout.max_new_tokens=90",
    ]
    want = run(tmp_path / "in-process", episodes)
    got = run(tmp_path / "ray", [*episodes, *RAY])
    assert_same_metrics(got, want)
    assert all(row["tools/calculator/calls_per_episode"] > 0 for row in got)
