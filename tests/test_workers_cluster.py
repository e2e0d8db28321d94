"""A Ray cluster made by ``ray start --head`` (on 127.0.0.1), joined by ``reasonrl run ...
distributed.address=HOST:PORT``: the run completes on its workers, and a cluster with fewer CPUs
than the workers hold is refused at the start with the sizes to change, not left waiting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reasonrl.logging import read_jsonl

ROOT = Path(__file__).parents[1]
RAY = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    # Ray's processes keep to 127.0.0.1 only where they believe no cluster can form: the head
    # here and the run's driver both, as on a one-machine cluster of a laptop
    out = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    return out


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    port = free_port()
    start = [*RAY, "start", "--head", f"--port={port}", "--num-cpus=3"]
    start += ["--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(start, env=env(), check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*RAY, "stop", "--force"], env=env(), capture_output=True, timeout=120)


def reasonrl_run(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "reasonrl", "run", "quickstart", "--out", str(out)]
    cmd += ["rl.steps=2", "rl.prompts_per_step=4", "rl.completions_per_prompt=4"]
    cmd += ["rl.micro_batch_completions=16", "rollout.max_new_tokens=8", "eval.limit=4"]
    cmd += ["eval.k=1", "log.report_to=none", "distributed.backend=ray", *overrides]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)


def test_a_run_joins_the_cluster_and_finishes_on_its_workers(head: str, tmp_path: Path) -> None:
    done = reasonrl_run(tmp_path, f"distributed.address={head}", "rollout.workers=2")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(read_jsonl(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["workers/rollout-1/tokens_per_s"] > 0 for r in rows)


def test_too_few_cpus_in_the_cluster_is_refused_with_the_sizes(head: str, tmp_path: Path) -> None:
    done = reasonrl_run(tmp_path, f"distributed.address={head}", "rollout.workers=4")
    assert done.returncode == 2
    assert "the workers hold 5 CPUs" in done.stderr and "the Ray cluster has 3" in done.stderr
    assert "Traceback" not in done.stderr
