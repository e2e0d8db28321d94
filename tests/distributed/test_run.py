"""``reasonrl run`` under ``torchrun`` on two CPU ranks (gloo, loopback) against one process:
SFT and DPO in float64 give the same saved model (DDP and FSDP2), the same metrics and the same
sharded evaluation; a run whose rank is killed stops at once with a message, and ``--resume``
continues it on one rank or on two, reproducing the uninterrupted run's metrics.jsonl. A
multi-stage recipe (SFT, then a reward model) on two FSDP2 ranks equals one process stage by
stage, and resumed on two DDP ranks skips its finished stage and continues the reward model's
checkpoint. Two ranks that each drive their own Ray workers (``distributed.backend=ray``) run
DAPO's sampling rounds as two ranks without Ray do (the same metrics and model), and run GRPO
asynchronously, the first step being the one-process run's."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from reasonrl.logging import read_jsonl
from reasonrl.models.value import HEAD_FILE
from reasonrl.pipeline import run_pipeline

ROOT = Path(__file__).parent.parent.parent
TINY = ["model.dtype=float64", "log.report_to=none", "eval.before=false"]
SFT = [
    "quickstart",
    "stage=sft",
    *TINY,
    "task.train_size=64",
    "task.eval_size=5",  # evaluation shards unevenly: 3 problems on rank 0, 2 on rank 1
    "sft.steps=4",
    "sft.examples_per_step=8",
    "sft.micro_batch_examples=2",
    "sft.warmup_steps=0",
    "eval.k=2",
    "eval.sampling.max_new_tokens=24",
    "log.checkpoint_every=1",
    "log.keep_checkpoints=10",
]
RL = [
    "quickstart",
    *TINY,
    "task.train_size=64",
    "eval.after=false",
    "rl.steps=3",
    "rl.prompts_per_step=4",
    "rl.completions_per_prompt=4",
    "rl.micro_batch_completions=4",
    "rl.learning_rate=1e-3",
    "rl.warmup_steps=0",
    "rollout.max_new_tokens=24",
    "log.checkpoint_every=1",
    "log.keep_checkpoints=10",
]
# two steps: the second one's completions come from the workers' pushed weights
RAY_RL = [*RL, "rl.steps=2", "rollout.max_new_tokens=16", "log.checkpoint_every=0"]
RAY = ["distributed.backend=ray", "rollout.workers=2", "rewards.workers=2"]
DPO = [
    "tiny-dpo",
    *TINY,
    "task.train_size=64",
    "task.eval_size=4",
    "dpo.data={source: generated, train_size: 16, eval_size: 8}",
    "dpo.steps=3",
    "dpo.pairs_per_step=4",
    "dpo.micro_batch_pairs=1",
    "dpo.warmup_steps=0",
    "dpo.learning_rate=5e-4",
    "dpo.eval_every=0",
    "eval.after=false",
    "log.checkpoint_every=0",
]

# SFT, then a reward model from its model: a classification head scoring each pair behind its
# shared prompt, whose last layer's output FSDP2 would otherwise see unused (RewardModel's
# zero term); one micro-batch per pair, so DDP accumulates before it reduces.
PIPELINE = {
    "name": "pipe",
    "task": {"name": "chain_sum", "train_size": 64, "eval_size": 5},
    "eval": {"after": False},
    "log": {"checkpoint_every": 0},
    "stages": [
        {
            "name": "sft",
            "stage": "sft",
            "model": {"path": "bundled"},
            "sft": {"steps": 2, "examples_per_step": 4, "micro_batch_examples": 1},
        },
        {
            "name": "judge",
            "stage": "rm",
            "rm": {
                "head": "classification",
                "likelihood": 0.0,
                "data": {"source": "generated", "train_size": 16, "eval_size": 5},
                "steps": 2,
                "pairs_per_step": 4,
                "micro_batch_pairs": 1,
                "warmup_steps": 0,
                "learning_rate": 1e-3,
                "eval_every": 0,
            },
            "log": {"checkpoint_every": 1},
        },
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def _command(ranks: int, args: list[str], out: Path) -> list[str]:
    cmd = [sys.executable]
    if ranks > 1:
        cmd += ["-m", "torch.distributed.run", f"--nproc-per-node={ranks}"]
        cmd += ["--master-addr=127.0.0.1", f"--master-port={_free_port()}"]
    return [*cmd, "-m", "reasonrl", "run", *args, "--out", str(out)]


def reasonrl_run(ranks: int, args: list[str], out: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        _command(ranks, args, out), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def assert_same_model(got: Path, want: Path, tol: float = 1e-10) -> None:
    a, b = load_file(got / "model.safetensors"), load_file(want / "model.safetensors")
    assert set(b) <= set(a)  # FSDP2's gathered state also names the tied lm_head
    if (want / HEAD_FILE).exists():  # a value-head reward model's scalar head
        a.update({f"head.{k}": v for k, v in torch.load(got / HEAD_FILE).items()})
        b.update({f"head.{k}": v for k, v in torch.load(want / HEAD_FILE).items()})
    for key, value in b.items():
        assert (a[key] - value).abs().max().item() < tol, key


def assert_same_metrics(
    got: Path, want: Path, tol: float = 1e-10, skip: tuple[str, ...] = ("perf/",)
) -> None:
    a, b = read_jsonl(got / "metrics.jsonl"), read_jsonl(want / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        keys = {k for k in y if not k.startswith(skip)}
        assert keys == {k for k in x if not k.startswith(skip)}
        for k in keys:
            assert x[k] == pytest.approx(y[k], abs=tol), (x["step"], k)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("one")
    reasonrl_run(1, SFT, root / "sft")
    reasonrl_run(1, DPO, root / "dpo")
    return {"sft": root / "sft", "dpo": root / "dpo"}


# SFT under FSDP2 on two ranks is the kill-and-resume test's run.
@pytest.mark.parametrize(("stage", "parallel"), [("sft", "ddp"), ("dpo", "ddp"), ("dpo", "fsdp")])
def test_two_ranks_train_and_evaluate_like_one_process(
    one_process: dict[str, Path], tmp_path: Path, stage: str, parallel: str
) -> None:
    out = tmp_path / "run"
    reasonrl_run(2, [*(SFT if stage == "sft" else DPO), f"train.parallel={parallel}"], out)
    want = one_process[stage]
    assert_same_model(out / "model", want / "model")
    assert_same_metrics(out, want)
    if stage == "sft":  # the sharded evaluation gathers the numbers of one process
        got_after = json.loads((out / "summary.json").read_text())["after"]
        want_after = json.loads((want / "summary.json").read_text())["after"]
        assert got_after == want_after
        assert want_after["n"] == 5 and set(want_after["pass_at_k"]) == {"1", "2"}


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The PID of the launched process with ``RANK=rank`` (a child of torchrun)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no rank {rank} among {children}")


def _kill_rank_1_after_step_1(args: list[str], out: Path, steps: int) -> None:
    """Run ``args`` on two ranks, ``kill -9`` rank 1 once ``step-1`` is written, and check that
    the job stops at once with the message, holding a complete checkpoint short of the end."""
    launcher = subprocess.Popen(
        _command(2, args, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "step-1").exists():
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.05)
    os.kill(_rank_pid(launcher, 1), signal.SIGKILL)
    killed = time.monotonic()
    _, err = launcher.communicate(timeout=120)
    # torchrun ends the other rank at once: not the process group's 10-minute timeout
    assert time.monotonic() - killed < 60
    assert launcher.returncode != 0
    message = "rank 0: stopped: another process of the run ended"
    assert message in err.decode() and "--resume" in err.decode()
    done = [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*")]
    assert 1 <= max(done) < steps, done  # stopped mid-run, after a complete checkpoint


def test_a_killed_rank_stops_the_run_which_resumes_on_one_or_two_ranks(
    one_process: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    _kill_rank_1_after_step_1([*SFT, "train.parallel=fsdp"], out, steps=4)
    on_two = tmp_path / "on-two"
    shutil.copytree(out, on_two)
    reasonrl_run(1, [*SFT, "--resume"], out)  # FSDP2's shards re-cut for one process
    reasonrl_run(2, [*SFT, "train.parallel=ddp", "--resume"], on_two)
    for resumed in (out, on_two):
        assert_same_metrics(resumed, one_process["sft"])
        assert_same_model(resumed / "model", one_process["sft"] / "model")


def test_grpo_on_two_ranks_stopped_and_resumed_on_one_or_two_is_the_one_process_run(
    tmp_path: Path,
) -> None:
    # the real entry point: the reference replica, the wrapped policy, the seeds and the
    # checkpoint of an RL run; a kill after step 1, resumed on 1 process and on 2 FSDP2 ranks
    want, out, on_two = tmp_path / "one", tmp_path / "killed", tmp_path / "on-two"
    reasonrl_run(1, RL, want)
    _kill_rank_1_after_step_1([*RL, "train.parallel=ddp"], out, steps=3)
    shutil.copytree(out, on_two)
    reasonrl_run(1, [*RL, "--resume"], out)
    reasonrl_run(2, [*RL, "train.parallel=fsdp", "--resume"], on_two)
    rewards = [r["reward/mean"] for r in read_jsonl(want / "metrics.jsonl") if "reward/mean" in r]
    assert len(rewards) == 3 and len(set(rewards)) > 1  # the run learned something to compare
    for resumed in (out, on_two):
        assert_same_metrics(resumed, want)
        assert_same_model(resumed / "model", want / "model")


def test_a_config_error_on_rank_0_stops_every_rank_with_one_message(tmp_path: Path) -> None:
    # rank 0 alone looks in the run directory: it finds nothing to resume and tells the others
    done = subprocess.run(
        _command(2, [*SFT, "--resume"], tmp_path / "empty"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert done.stderr.count("error:") == 1 and "nothing to resume" in done.stderr
    assert "exitcode  : 2" in done.stderr  # torchrun's report of the failed ranks


def test_a_pipeline_on_two_ranks_is_the_one_process_pipeline_and_resumes_past_a_finished_stage(
    tmp_path: Path,
) -> None:
    recipe = tmp_path / "pipe.yaml"
    recipe.write_text(yaml.safe_dump(PIPELINE))
    want, got, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    run_pipeline(recipe, TINY, want)  # in this process: one launch's start-up (seconds) saved
    reasonrl_run(2, [str(recipe), *TINY, "train.parallel=fsdp"], got)
    for stage in ("0-sft", "1-judge"):
        assert_same_metrics(got / stage, want / stage)
        assert_same_model(got / stage / "model", want / stage / "model")
    judge = [r for r in read_jsonl(want / "1-judge" / "metrics.jsonl") if "loss/rm" in r]
    assert len(judge) == 2 and judge[0]["loss/rm"] != judge[1]["loss/rm"]
    rows = json.loads((got / "summary.json").read_text())["stages"]
    assert [r["name"] for r in rows] == ["sft", "judge"] and rows[1]["eval"]["n"] == 5

    # the reward model stopped after its step 1: --resume skips SFT and continues from step-1
    shutil.copytree(got, resumed)
    judge_dir = resumed / "1-judge"
    (judge_dir / "summary.json").unlink()
    shutil.rmtree(judge_dir / "model")
    shutil.rmtree(judge_dir / "checkpoints" / "step-2")
    rows = [r for r in read_jsonl(judge_dir / "metrics.jsonl") if r["step"] <= 1]
    (judge_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft_summary = (resumed / "0-sft" / "summary.json").stat().st_mtime_ns
    done = reasonrl_run(2, [str(recipe), *TINY, "train.parallel=ddp", "--resume"], resumed)
    assert "stage 0 sft: done, skipped" in done.stdout
    assert (resumed / "0-sft" / "summary.json").stat().st_mtime_ns == sft_summary
    assert_same_metrics(judge_dir, want / "1-judge")
    assert_same_model(judge_dir / "model", want / "1-judge" / "model")


@pytest.fixture(scope="module")
def rl_one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GRPO in one process, rollouts and rewards in it (no Ray)."""
    out = tmp_path_factory.mktemp("rl-one") / "run"
    reasonrl_run(1, RAY_RL, out)
    return out


def test_two_ranks_with_asynchronous_ray_rollouts_train_on_one_update_old_batches(
    rl_one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "async"
    reasonrl_run(2, [*RAY_RL, *RAY, "rollout.async_steps=1"], out)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["async/staleness"] for r in rows] == [0, 1]
    # step 1 was generated before any update, on both ranks: the synchronous run's step 1
    want = read_jsonl(rl_one_process / "metrics.jsonl")[0]
    assert rows[0]["reward/mean"] == pytest.approx(want["reward/mean"], abs=1e-6)
    assert rows[0]["loss/policy"] == pytest.approx(want["loss/policy"], abs=1e-6)
    assert all(math.isfinite(r["loss/policy"]) for r in rows)


def test_dapo_on_two_fsdp_ranks_driving_ray_workers_is_dapo_on_two_ranks(tmp_path: Path) -> None:
    # each rank asks its own workers for the later sampling rounds, and the rounds' flags are
    # exchanged over the ranks as without Ray (two ranks may drop a group one process keeps);
    # under FSDP2 the ranks gather the whole weights for their workers (the second step's)
    dapo = [*RAY_RL, "algo.name=dapo", "rl.mini_batch_completions=8", "train.parallel=fsdp"]
    dapo += ["algo.overlong_filter=false"]
    reasonrl_run(2, dapo, tmp_path / "ranks")
    reasonrl_run(2, [*dapo, *RAY], tmp_path / "ray")
    assert_same_metrics(tmp_path / "ray", tmp_path / "ranks", 1e-6, ("perf/", "async/", "workers/"))
    assert_same_model(tmp_path / "ray" / "model", tmp_path / "ranks" / "model", tol=1e-6)
    rows = read_jsonl(tmp_path / "ray" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["sampling/rounds"] > 1
    for row in rows:
        # each rank started one rollout and one reward worker (of the run's 2 + 2) in the one
        # Ray that rank 0 started, for its own block of the groups; numbered over the run
        assert row["workers/rollout-0/tokens_per_s"] > 0
        assert row["workers/rollout-1/tokens_per_s"] > 0
        assert row["workers/reward-1/completions_per_s"] > 0
        assert row["async/staleness"] == 0 and row["workers/restarts"] == 0
    assert not (tmp_path / "ray" / "workers.log").exists()  # nothing failed
