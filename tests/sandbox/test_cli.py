import os

from typer.testing import CliRunner

from reasonrl.sandbox import RunCodeRequest, SandboxClient
from reasonrl.sandbox.cli import sandbox_app


def test_serve_refuses_a_public_address_without_a_token():
    env = {"REASONRL_SANDBOX_TOKEN": None}
    result = CliRunner().invoke(sandbox_app, ["serve", "--host", "0.0.0.0"], env=env)
    assert result.exit_code == 2
    assert "needs --token" in result.output


def test_serve_runs_code(spawn_server):
    _, url = spawn_server("--workers", "1")
    client = SandboxClient(url, retries=0)
    assert client.health()["workers"] == 1
    assert client.run_code(RunCodeRequest(code="print(2 + 2)")).run_result.stdout == "4\n"


def test_default_workers_fit_the_machines_memory(spawn_server):
    # one request may hold --request-memory-mb: a machine's memory holds this many at once
    ram_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    _, url = spawn_server("--request-memory-mb", str(ram_mb))
    assert SandboxClient(url, retries=0).health()["workers"] == 1
