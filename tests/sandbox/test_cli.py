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
