"""The HTTP layer: SandboxFusion's request/response shape, health, token, queue limit."""

import threading

import httpx
import pytest

from reasonrl.sandbox import RunCodeRequest, SandboxClient, SandboxUnavailable


def test_run_code_speaks_sandboxfusion(live_server):
    body = {
        "code": "print(input()[::-1])",
        "language": "python",
        "stdin": "abc",
        "compile_timeout": 10,  # SandboxFusion fields we do not implement are ignored
        "run_timeout": 5,
        "memory_limit_MB": 512,
    }
    reply = httpx.post(f"{live_server.url}/run_code", json=body, timeout=30).json()
    assert reply["status"] == "Success"
    run = reply["run_result"]
    assert set(run) == {"status", "return_code", "stdout", "stderr", "execution_time"}
    assert (run["status"], run["return_code"], run["stdout"]) == ("Finished", 0, "cba\n")


def test_bad_requests_are_rejected(live_server):
    for body in (
        {"code": "print(1)", "language": "rust"},
        {"code": "x", "files": {"../escape": "eA=="}},
        {"code": "x", "run_timeout": 10_000},
    ):
        assert httpx.post(f"{live_server.url}/run_code", json=body).status_code == 422


def test_health(client):
    health = client.health()
    assert health["status"] == "ok"
    assert health["workers"] == 2


def test_token_is_required_when_set(start_server):
    server = start_server(workers=1, queue=4, token="s3cret")
    anonymous = SandboxClient(server.url, retries=0)
    with pytest.raises(SandboxUnavailable, match="401"):
        anonymous.run_code(RunCodeRequest(code="print(1)"))
    assert anonymous.health()["status"] == "ok"
    wrong = SandboxClient(server.url, token="guess", retries=0)
    with pytest.raises(SandboxUnavailable, match="401"):
        wrong.run_code(RunCodeRequest(code="print(1)"))
    right = SandboxClient(server.url, token="s3cret", retries=0)
    assert right.run_code(RunCodeRequest(code="print(1)")).status == "Success"


def test_a_full_queue_answers_429_and_the_client_retries(start_server):
    server = start_server(workers=1, queue=0, token=None)
    slow = RunCodeRequest(code="import time\ntime.sleep(1)")
    outcomes: list[str] = []

    def call(client: SandboxClient) -> None:
        try:
            outcomes.append(client.run_code(slow).status)
        except SandboxUnavailable as e:
            outcomes.append(str(e))

    impatient = SandboxClient(server.url, retries=0)
    threads = [threading.Thread(target=call, args=(impatient,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("Success") >= 1
    assert any("429" in o for o in outcomes)
    patient = SandboxClient(server.url, retries=6, backoff_s=0.25)
    outcomes.clear()
    threads = [threading.Thread(target=call, args=(patient,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == ["Success", "Success"]


def test_unreachable_server_raises_after_retries():
    client = SandboxClient("http://127.0.0.1:9", retries=1, backoff_s=0.01)
    with pytest.raises(SandboxUnavailable, match="after 2 attempts"):
        client.run_code(RunCodeRequest(code="print(1)"))


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"a": "eA==", "a/b": "eA=="}, "collide"),
        ({"main.py/x": "eA=="}, "collide"),
        ({"a\u0000b": "eA=="}, "NUL"),
        ({"x" * 300: "eA=="}, "too long"),
        ({"/".join(["d"] * 600): "eA=="}, "too long"),
        ({"a": "eA==", "./a": "eA=="}, "twice"),
    ],
    ids=["file-and-dir", "main-as-dir", "nul", "long-name", "long-path", "same-file"],
)
def test_bad_file_names_get_422_with_the_reason(live_server, files, reason):
    reply = httpx.post(f"{live_server.url}/run_code", json={"code": "print(1)", "files": files})
    assert reply.status_code == 422
    assert reason in reply.text


def test_sandboxfusions_own_client_accepts_every_outcome(live_server):
    # SandboxFusion's client, unchanged: it raises on a result its server would not give.
    from sandbox_fusion import RunCodeRequest as FusionRequest
    from sandbox_fusion import RunStatus, SummaryMapping, run_code, summary_run_code_result

    mapping = SummaryMapping(
        Success="ok", Failed="failed", RunFailed="run-failed", RunTimeout="timeout"
    )
    cases = {
        "print(1)": ("Success", "Finished", 0, "ok"),
        "import sys\nprint('e', file=sys.stderr)\nsys.exit(3)": (
            "Failed",
            "Finished",
            3,
            "run-failed",
        ),
        "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)": (
            "Failed",
            "Finished",
            -15,
            "run-failed",
        ),
        "import time\ntime.sleep(30)": ("Failed", "TimeLimitExceeded", None, "timeout"),
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)": (
            "Failed",
            "Finished",
            -9,
            "run-failed",
        ),
        "import sys\nwhile True:\n    sys.stderr.write('x' * 65536)": (
            "Failed",
            "Finished",
            -9,
            "run-failed",
        ),
    }
    for code, (status, run_status, return_code, summary) in cases.items():
        request = FusionRequest(code=code, language="python", run_timeout=1)
        result = run_code(request, endpoint=live_server.url, max_attempts=1)
        run = result.run_result
        assert (result.status, run.status, run.return_code) == (status, run_status, return_code)
        assert summary_run_code_result(result, mapping) == summary
        assert "unshare" not in run.stderr and "reasonrl-jail" not in run.stderr
        assert result.status != RunStatus.SandboxError
