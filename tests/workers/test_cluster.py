"""A Ray cluster made by ``ray start --head`` (on 127.0.0.1), joined by ``reasonrl run ...
distributed.address=HOST:PORT``: the run completes on its workers, and a cluster with fewer CPUs
than the workers hold is refused at the start with the sizes to change, not left waiting."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from reasonrl.logging import read_jsonl

ROOT = Path(__file__).parents[2]
RAY = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    # Ray's processes keep to 127.0.0.1 only where they believe no cluster can form: the head
    # here and the run's driver both, as on a one-machine cluster of a laptop. `ray start`
    # checks a token (in ~/.ray/auth_token), which a driver sends only when told to.
    out = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    out.update(RAY_AUTH_MODE="token")
    return out


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """A one-machine cluster of its own (its own temp dir), stopped by killing its processes
    alone: `ray stop` would stop every Ray on the machine."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: socket paths
    start = [*RAY, "start", "--head", f"--port={port}", "--num-cpus=3", f"--temp-dir={temp}"]
    start += ["--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(start, env=env(), check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for proc in psutil.process_iter(["cmdline"]):
            if any(temp in part or f":{port}" in part for part in proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


def reasonrl_run(
    out: Path, *overrides: str, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "reasonrl", "run", "quickstart", "--out", str(out)]
    cmd += ["rl.steps=2", "rl.prompts_per_step=4", "rl.completions_per_prompt=4"]
    cmd += ["rl.micro_batch_completions=16", "rollout.max_new_tokens=8", "eval.before=false"]
    cmd += ["eval.after=false", "log.report_to=none", "distributed.backend=ray", *overrides]
    return subprocess.run(
        cmd, env={**env(), **(environ or {})}, capture_output=True, text=True, timeout=600
    )


def test_a_run_joins_the_cluster_and_finishes_on_its_workers(head: str, tmp_path: Path) -> None:
    done = reasonrl_run(tmp_path, f"distributed.address={head}", "rollout.workers=2")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["workers/rollout-1/tokens_per_s"] > 0 for r in rows)


def test_joining_without_the_clusters_token_is_an_error_saying_how(
    head: str, tmp_path: Path
) -> None:
    # one try at the head instead of Ray's 20 a second apart: the same refusal, 20 s sooner
    quick = {"RAY_gcs_server_port_wait_time_s": "1"}
    done = reasonrl_run(
        tmp_path, f"distributed.address={head}", environ={"RAY_AUTH_MODE": "disabled", **quick}
    )
    assert done.returncode == 2
    said = " ".join(done.stderr.split())  # the console wraps long lines
    assert f"cannot join the Ray cluster at distributed.address={head}" in said
    assert "export RAY_AUTH_MODE=token" in said and "Traceback" not in said


def test_too_few_cpus_in_the_cluster_is_refused_with_the_sizes(head: str, tmp_path: Path) -> None:
    done = reasonrl_run(tmp_path, f"distributed.address={head}", "rollout.workers=4")
    assert done.returncode == 2
    said = " ".join(done.stderr.split())
    assert "the workers hold 5 CPUs" in said and "the Ray cluster has 3" in said
    assert "Traceback" not in said
