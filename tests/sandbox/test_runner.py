"""The in-process sandbox: /run_code semantics, io and asserts evaluation, honest edge cases."""

import base64
import os
import shutil
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from reasonrl.sandbox import (
    AssertTests,
    EvaluateRequest,
    IOCase,
    IOTests,
    Limits,
    RunCodeRequest,
    Sandbox,
    runner,
)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Sandbox:
    return Sandbox(base_dir=tmp_path_factory.mktemp("jails"))


def test_run_code_stdin_files_and_exit_status(sandbox):
    files = {"data/in.txt": base64.b64encode(b"from a file").decode()}
    code = "import sys\nprint(sys.stdin.read().upper())\nprint(open('data/in.txt').read())\n"
    result = sandbox.run_code(RunCodeRequest(code=code, stdin="hello", files=files))
    assert result.status == "Success"
    assert result.run_result.stdout == "HELLO\nfrom a file\n"
    assert result.run_result.return_code == 0
    failed = sandbox.run_code(
        RunCodeRequest(code="import sys\nprint('x', file=sys.stderr)\nexit(3)")
    )
    assert failed.status == "Failed"
    assert (failed.run_result.status, failed.run_result.return_code) == ("Finished", 3)
    assert failed.run_result.stderr == "x\n"
    broken = sandbox.run_code(RunCodeRequest(code="def f(:"))
    assert broken.status == "Failed"
    assert "SyntaxError" in broken.run_result.stderr
    slow = sandbox.run_code(RunCodeRequest(code="import time\ntime.sleep(9)", run_timeout=0.5))
    assert (slow.status, slow.run_result.status) == ("Failed", "TimeLimitExceeded")
    assert slow.run_result.return_code is None


def _io(*cases: tuple[str, str]) -> IOTests:
    return IOTests(kind="io", cases=[IOCase(stdin=i, expected_stdout=o) for i, o in cases])


@pytest.mark.parametrize(
    ("code", "status", "passed"),
    [
        ("a, b = map(int, input().split())\nprint(a + b)", "passed", 3),
        ("a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()", "passed", 3),
        ("a, b = map(int, input().split())\nprint(a * b if a == 5 else a + b)", "failed", 2),
        ("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(1)", "failed", 0),
        ("print(3)", "failed", 1),
        ("import time\ntime.sleep(5)", "timeout", 0),
    ],
)
def test_io_tests(sandbox, code, status, passed):
    tests = _io(("1 2\n", "3\n"), ("5 5", "10"), ("-1 1\n", "0"))
    verdict = sandbox.evaluate(EvaluateRequest(code=code, tests=tests, timeout=1.0))
    assert (verdict.status, verdict.passed, verdict.total) == (status, passed, 3)


def _asserts(test_code: str, entry: str | None = None) -> AssertTests:
    return AssertTests(kind="asserts", test_code=textwrap.dedent(test_code), entry_point=entry)


def test_asserts_with_helpers_kwargs_and_builtin_exceptions(sandbox):
    code = textwrap.dedent(
        """
        def poly(xs, x):
            return sum(c * x**i for i, c in enumerate(xs))

        def root(xs, *, start=0.0):
            if not xs:
                raise ValueError("empty")
            return -xs[0] / xs[1]
        """
    )
    tests = _asserts(
        """
        def check(candidate):
            r = candidate([2.0, 4.0], start=1.0)
            assert abs(poly([2.0, 4.0], r)) < 1e-9  # poly is the solution's helper
            assert candidate([1, 2]) == -0.5
            try:
                candidate([])
            except ValueError as e:
                assert str(e) == "empty"
            else:
                raise AssertionError("no ValueError")
        """,
        entry="root",
    )
    verdict = sandbox.evaluate(EvaluateRequest(code=code, tests=tests))
    assert verdict.status == "passed", verdict


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        ("def f(x):\n    return (x, [x], {x: {x}}, None, True, 1.5, 'x', b'x')", "passed", ""),
        ("def f(x):\n    return x + 1", "failed", "AssertionError"),
        ("def f(x):\n    yield x", "failed", "non-plain"),
        ("def g(x):\n    return x", "failed", "does not define 'f'"),
        ("def f(x):\n    raise KeyError(x)", "failed", "KeyError"),
    ],
)
def test_asserts_verdicts(sandbox, code, status, reason):
    tests = _asserts(
        """
        def check(candidate):
            assert candidate(2) == (2, [2], {2: {2}}, None, True, 1.5, 'x', b'x')
        """,
        entry="f",
    )
    verdict = sandbox.evaluate(EvaluateRequest(code=code, tests=tests))
    assert verdict.status == status
    assert reason in verdict.details[0].reason


def test_a_solution_cannot_end_the_tests_loop_with_stop_iteration(sandbox):
    # all(map(...)) would stop at a StopIteration raised by a call and call the rest passed
    tests = _asserts("assert all(map(lambda t: square(t[0]) == t[1], [(3, 9), (4, 16)]))\n")
    code = "def square(x):\n    raise StopIteration('done')"
    verdict = sandbox.evaluate(EvaluateRequest(code=code, tests=tests))
    assert verdict.status == "failed"
    good = sandbox.evaluate(EvaluateRequest(code="def square(x):\n    return x * x", tests=tests))
    assert good.status == "passed"


def test_top_level_asserts_without_entry_point(sandbox):
    tests = _asserts("assert add(1, 2) == 3\nassert add(-1, 1) == 0\n")
    good = sandbox.evaluate(EvaluateRequest(code="def add(a, b):\n    return a + b", tests=tests))
    assert good.status == "passed"
    bad = sandbox.evaluate(EvaluateRequest(code="def add(a, b):\n    return 3", tests=tests))
    assert bad.status == "failed"


def test_a_jail_that_cannot_be_built_is_an_error_not_the_candidates_fault(tmp_path):
    tiny = Sandbox(Limits(disk_mb=1), base_dir=tmp_path)
    files = {"big.bin": base64.b64encode(b"x" * (2 << 20)).decode()}
    result = tiny.run_code(RunCodeRequest(code="print(1)", files=files))
    assert result.status == "SandboxError"
    assert "setup failed" in result.message
    assert list(tmp_path.iterdir()) == []


# Forks, one after the other, children that each try to hold 80 MB (pages touched); then
# prints how many of them hold it at once: the memory one request has.
HOARD = """
import os, select, time
r, w = os.pipe()
holding = []
for _ in range(6):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        block = b"x" * (80 << 20)
        os.write(w, b"+")
        time.sleep(30)
        os._exit(0)
    while not select.select([r], [], [], 0.05)[0]:  # until it holds its block, or died trying
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            break
    else:
        os.read(r, 1)
        holding.append(pid)
print(sum(os.waitpid(p, os.WNOHANG) == (0, 0) for p in holding))
"""


@pytest.mark.parametrize(
    "cgroups", [True, False], ids=["cgroup-where-allowed", "processes-x-memory"]
)
def test_a_requests_memory_is_bounded_in_total(tmp_path, cgroups):
    sandbox = Sandbox(Limits(request_memory_mb=256), base_dir=tmp_path, memory_cgroups=cgroups)
    result = sandbox.run_code(RunCodeRequest(code=HOARD, memory_limit_MB=128))
    assert result.status == "Success", (result.message, result.run_result)
    held = int(result.run_result.stdout)
    assert held >= 1  # one child fits
    assert held * 80 <= 256  # never more than the request's memory, whatever processes it has


def test_the_clients_memory_limit_is_capped_by_the_servers(tmp_path):
    sandbox = Sandbox(Limits(request_memory_mb=256), base_dir=tmp_path)
    code = "block = b'x' * (300 << 20)\nprint('held')"
    result = sandbox.run_code(RunCodeRequest(code=code, memory_limit_MB=2048))
    assert result.status == "Failed"
    assert "MemoryError" in result.run_result.stderr


def test_a_trusted_request_imports_from_a_venv_made_under_tmp(tmp_path, monkeypatch):
    # .ci/run (and many users) make the venv in a temporary directory: its site directory is
    # bound under the jail's /tmp, which the jail then makes writable around it
    site_dir = tempfile.mkdtemp(prefix="venv-", dir="/tmp") + "/lib/site-packages"
    os.makedirs(site_dir)
    Path(site_dir, "venv_probe.py").write_text("ANSWER = 42\n")
    host = replace(runner._host(), site_dirs=(site_dir,))
    monkeypatch.setattr(runner, "_host", lambda: host)
    sandbox = Sandbox(base_dir=tmp_path)
    code = "import venv_probe; print(venv_probe.ANSWER); open('/tmp/x', 'w').write('ok')"
    result = sandbox.run_code(RunCodeRequest(code=code, packages=True))
    shutil.rmtree(Path(site_dir).parents[1])
    assert (result.status, result.run_result.stdout) == ("Success", "42\n"), result
