import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reasonrl.config import ConfigError
from reasonrl.distributed import (
    Ranks,
    all_gather_objects,
    all_reduce_sum,
    broadcast_object,
    global_counts,
    init_distributed,
    shard,
)
from reasonrl.distributed.ranks import ENV_VARS, shutdown

HERE = Path(__file__).parent


@pytest.fixture
def launcher_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("world", [None, "1"])
def test_one_process_needs_no_launcher(launcher_env: pytest.MonkeyPatch, world: str | None):
    if world is not None:
        launcher_env.setenv("WORLD_SIZE", world)
    assert init_distributed("cpu") == Ranks()
    assert torch.distributed.is_initialized() is False


def test_half_set_environment_says_what_is_missing(launcher_env: pytest.MonkeyPatch) -> None:
    launcher_env.setenv("WORLD_SIZE", "2")
    launcher_env.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT is not set"):
        init_distributed("cpu")


def test_rank_outside_world_is_refused(launcher_env: pytest.MonkeyPatch) -> None:
    for var, value in zip(ENV_VARS, ["2", "2", "0", "127.0.0.1", "29500"], strict=True):
        launcher_env.setenv(var, value)
    with pytest.raises(ConfigError, match="RANK=2 is outside WORLD_SIZE=2"):
        init_distributed("cpu")
    launcher_env.setenv("RANK", "one")
    with pytest.raises(ConfigError, match="RANK=one"):
        init_distributed("cpu")


def test_a_second_call_reuses_the_group_of_the_same_backend(
    launcher_env: pytest.MonkeyPatch,
) -> None:
    # each stage of a multi-stage recipe calls it again; a one-process gloo group stands in
    for var, value in zip(ENV_VARS, ["1", "2", "1", "127.0.0.1", "29500"], strict=True):
        launcher_env.setenv(var, value)
    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        group = torch.distributed.group.WORLD
        assert init_distributed("cpu") == Ranks(1, 2, 1)
        assert torch.distributed.group.WORLD is group
        with pytest.raises(ConfigError, match="uses gloo, but a model on cuda needs nccl"):
            init_distributed("cuda")
    finally:
        torch.distributed.destroy_process_group()


def test_shutdown_leaves_a_group_it_did_not_make() -> None:
    # an in-process vLLM engine makes the default group of a one-process run, and destroys it
    # itself at exit: destroying it first makes that exit fail
    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        shutdown()
        assert torch.distributed.is_initialized()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize(
    ("n", "world", "even", "blocks"),
    [
        (4, 1, True, [[0, 1, 2, 3]]),
        (4, 2, True, [[0, 1], [2, 3]]),
        (6, 3, True, [[0, 1], [2, 3], [4, 5]]),
        (5, 2, False, [[0, 1, 2], [3, 4]]),
        (7, 3, False, [[0, 1, 2], [3, 4], [5, 6]]),
        (1, 3, False, [[0], [], []]),
    ],
)
def test_shard_gives_contiguous_blocks_in_rank_order(
    n: int, world: int, even: bool, blocks: list[list[int]]
) -> None:
    got = [list(shard(n, Ranks(r, world, r), even)) for r in range(world)]
    assert got == blocks


def test_uneven_training_batch_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"rl.prompts_per_step=5 .* \(2\)"):
        shard(5, Ranks(1, 2, 1))


def test_collectives_are_the_identity_with_one_process() -> None:
    t = torch.tensor([1.5, 2.0])
    assert all_reduce_sum(t, Ranks()) is t
    assert all_reduce_sum(3, Ranks()) == 3
    assert all_gather_objects({"a": 1}, Ranks()) == [{"a": 1}]
    assert broadcast_object("x", Ranks()) == "x"
    assert global_counts(17, 4, Ranks()) == (17, 4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_gives_each_process_its_rank(tmp_path: Path) -> None:
    # `--cpu` would start one process (accelerate runs several CPU processes only through
    # mpirun); `--multi_gpu` is its torchrun path, which needs no GPU: init_distributed("cpu")
    # then picks gloo.
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent.parent))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", "--main_process_ip", "127.0.0.1"]
    cmd += ["--main_process_port", str(free_port()), str(HERE / "show_ranks.py"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert sorted(x["ranks"] for x in lines) == [[0, 2, 0], [1, 2, 1]]
    assert all(x["seen"] == [0, 1] for x in lines)
