"""The RL trainer on two gloo ranks against one process: ``train_rl`` for 3 steps of the bundled
model in float64 gives the same parameters (to 1e-10), the same logged metrics and the same
samples.jsonl, under DDP and FSDP2, for the per-token and per-sequence loss aggregations (under
DDP: the wrappers reduce alike), with several mini-batches and two epochs (batch-wide std and
whitening), PPO with its critic, and under FSDP2 DAPO's dynamic sampling (a second round
drawn, the kept groups dealt between the ranks) and packed forwards (ranks packing different
numbers of rows).

One ``torchrun`` launch (``rl_worker.py``) runs every two-rank case, while one process runs each
configuration once beside it.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from reasonrl.config import ConfigError, load_config
from reasonrl.distributed import Ranks
from reasonrl.models import load_model, resolve_model_path
from reasonrl.models.value import ValueModel
from reasonrl.train.critic import CRITIC_DIR, Critic
from reasonrl.train.update import check_ranks

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TWO_RANKS = [
    # the per-token and the per-sequence sums across ranks (seq_mean_token_sum_norm divides the
    # same sequence count by a constant); under either wrapper they are the same reductions
    "token_mean:ddp",
    "seq_mean_token_mean:ddp",
    "mini:fsdp",
    "ppo:ddp",  # a critic saved by DDP ranks and by FSDP2 ranks, below
    "ppo:fsdp",
    "dapo:fsdp",
    "pack_ppo:fsdp",
]  # fmt: skip
ONE_PROCESS = sorted({f"{case.split(':')[0]}:ddp" for case in TWO_RANKS})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_env() -> dict[str, str]:
    """Loopback only, one thread per process, this checkout; no launcher variables (the
    one-process run must see none)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rl-ranks")
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launch += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    worker = str(HERE / "rl_worker.py")
    env = local_env()
    one = subprocess.Popen(
        [sys.executable, worker, str(out), *ONE_PROCESS],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    two = subprocess.run(
        [*launch, worker, str(out), *TWO_RANKS],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    _, one_err = one.communicate(timeout=600)
    assert two.returncode == 0, two.stderr[-4000:]
    assert one.returncode == 0, one_err[-4000:]
    return out


def _load(out: Path, tag: str) -> dict[str, Any]:
    return torch.load(out / f"{tag}.pt", weights_only=False)


def _assert_close(got: dict, want: dict, tol: float) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert torch.allclose(got[name], value, rtol=0, atol=tol), name


@pytest.mark.parametrize("case", TWO_RANKS)
def test_two_ranks_train_like_one(runs: Path, case: str) -> None:
    name, parallel = case.split(":")
    two, one = _load(runs, f"{name}-{parallel}-w2"), _load(runs, f"{name}-ddp-w1")
    # 1e-10: AdamW is nearly blind to a gradient scale (an averaged gradient moves ~1e-8)
    _assert_close(two["policy"], one["policy"], 1e-10)
    start = load_model(load_config("quickstart", ["model.dtype=float64"]).model)
    moved = [not torch.equal(v, start.state_dict()[k]) for k, v in one["policy"].items()]
    assert any(moved)
    if name.endswith("ppo"):
        _assert_close(two["critic"], one["critic"], 1e-10)
    assert len(two["metrics"]) == len(one["metrics"]) == 3
    for got, want in zip(two["metrics"], one["metrics"], strict=True):
        keys = {k for k in want if not k.startswith("perf/")}
        assert keys <= got.keys()
        for key in keys:
            if want[key] is None:  # NaN in metrics.jsonl (kl/mean without a reference)
                assert got[key] is None, key
            elif isinstance(want[key], float) and math.isnan(want[key]):
                assert math.isnan(got[key]), key
            else:
                assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    # rank 0 logs the groups of both ranks, in one process's order
    assert two["samples"] == one["samples"] and len(one["samples"]) == 3 * 4
    # the rewards differ within groups, so the advantages (and the steps) are not all zero
    assert any(m["groups/all_equal"] < 1 for m in one["metrics"])
    if name == "dapo":  # groups were dropped and more drawn, and all that were kept train
        assert max(m["sampling/rounds"] for m in one["metrics"]) > 1
        assert all(m["groups/all_equal"] == 0 for m in one["metrics"])
        assert not any("sampling/dropped_groups" in m for m in two["metrics"])


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_critic_saved_by_two_ranks_resumes_on_one(runs: Path, parallel: str) -> None:
    want = _load(runs, f"ppo-{parallel}-w2")["critic"]
    saved = runs / f"ppo-{parallel}-w2-critic"
    cfg = load_config("quickstart", ["algo.name=ppo", "model.dtype=float64"])
    fresh = ValueModel.from_pretrained(resolve_model_path("bundled"), torch.float64)
    critic = Critic(fresh, cfg, Ranks())
    critic.load(saved)  # weights and AdamW state from the DCP checkpoint
    _assert_close(fresh.state_dict(), want, 1e-12)
    assert critic.optimizer.state  # the moments came back, not only the weights
    exported = ValueModel.from_pretrained(str(saved / CRITIC_DIR), torch.float64)
    _assert_close(exported.state_dict(), want, 1e-12)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["rl.prompts_per_step=3"], "rl.prompts_per_step"),
        (["rollout.engine=vllm"], "rollout.engine=vllm runs on one trainer process"),
        (
            [
                "rl.prompts_per_step=2",
                "rl.mini_batch_completions=1",
                "rl.micro_batch_completions=1",
            ],
            "rl.mini_batch_completions",
        ),
        # Ray's workers count the run's: each rank drives an equal share
        (["distributed.backend=ray", "rollout.workers=3"], "rollout.workers=3 counts the run's"),
        (
            ["distributed.backend=ray", "rollout.workers=2", "rewards.workers=3"],
            "rewards.workers=3 counts the run's",
        ),
        (
            ["distributed.backend=ray", "train.parallel=fsdp", "model.lora={r: 4}"],
            "with train.parallel=fsdp and model.lora is not built",
        ),
    ],
)
def test_what_two_ranks_cannot_split_is_refused_before_the_first_step(
    overrides: list[str], names: str
) -> None:
    base = ["rl.completions_per_prompt=4", "rl.micro_batch_completions=4"]
    cfg = load_config("quickstart", [*base, *overrides])
    check_ranks(cfg, Ranks())  # one process runs it
    with pytest.raises(ConfigError, match=names):
        check_ranks(cfg, Ranks(0, 2, 0))


def test_ray_workers_that_split_over_the_ranks_are_accepted() -> None:
    ray = ["distributed.backend=ray", "rollout.workers=4", "rewards.workers=2"]
    cfg = load_config("quickstart", ["rl.completions_per_prompt=4", *ray])
    check_ranks(cfg, Ranks(1, 2, 1))
    with pytest.raises(ConfigError, match="rollout.workers=4 counts the run's"):
        check_ranks(cfg, Ranks(0, 3, 0))
