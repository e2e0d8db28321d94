import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

import reasonrl
from reasonrl.sandbox import (
    AssertTests,
    EvaluateRequest,
    Sandbox,
    SandboxClient,
    isolation_problem,
)
from reasonrl.sandbox.server import create_app

HONEST = EvaluateRequest(
    code="def add(a, b):\n    return a + b\n",
    tests=AssertTests(
        kind="asserts",
        test_code="def check(candidate):\n    assert candidate(2, 3) == 5\n",
        entry_point="add",
    ),
)


@pytest.fixture(scope="session", autouse=True)
def _needs_isolation() -> None:
    problem = isolation_problem()
    if problem is not None:
        pytest.skip(f"sandbox isolation unavailable: {problem}")


class LiveServer:
    """A sandbox server on 127.0.0.1 (ephemeral port) in a thread of the test process."""

    def __init__(self, base_dir: Path, workers: int, queue: int, token: str | None) -> None:
        self.base_dir = base_dir
        base_dir.mkdir(exist_ok=True)
        app = create_app(Sandbox(base_dir=base_dir), workers, queue, token)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("jails"), workers=2, queue=64, token=None)
    yield server
    server.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """``start_server(workers=, queue=, token=)``: another server, stopped after the test."""
    servers: list[LiveServer] = []

    def start(workers: int, queue: int, token: str | None) -> LiveServer:
        servers.append(LiveServer(tmp_path / str(len(servers)), workers, queue, token))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def client(live_server: LiveServer) -> Iterator[SandboxClient]:
    c = SandboxClient(live_server.url, retries=0)
    yield c
    c.close()


def _processes_mentioning(text: str) -> list[int]:
    """PIDs of this machine's processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def processes_mentioning() -> Callable[[str], list[int]]:
    return _processes_mentioning


@pytest.fixture
def stays_healthy(live_server: LiveServer, client: SandboxClient) -> Iterator[None]:
    """After the test: an honest request passes, no jail process is left, no staging files."""
    yield
    assert client.evaluate(HONEST).status == "passed"
    assert _processes_mentioning(str(live_server.base_dir)) == []
    assert list(live_server.base_dir.iterdir()) == []


@pytest.fixture
def spawn_server() -> Iterator[Callable[..., tuple[subprocess.Popen, str]]]:
    """``spawn_server(*args)``: ``sandbox serve ARGS`` in a child process on a free port;
    returns (process, url) once /health answers; terminated after the test."""
    procs: list[subprocess.Popen] = []

    def spawn(*args: str) -> tuple[subprocess.Popen, str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(Path(reasonrl.__file__).resolve().parents[1])}
        code = "from reasonrl.sandbox.cli import sandbox_app; sandbox_app()"
        cmd = [sys.executable, "-c", code, "serve", "--port", str(port), *args]
        procs.append(subprocess.Popen(cmd, env=env))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/health").raise_for_status()
                return procs[-1], url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the server did not come up")

    yield spawn
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)
