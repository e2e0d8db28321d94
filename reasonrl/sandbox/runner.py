"""The sandbox's engine: run code in jails on this machine and turn what happened into verdicts.

The server calls it from its worker threads; single-machine runs call it in-process through
:class:`Sandbox` with exactly the same isolation (described in :mod:`reasonrl.sandbox`).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from reasonrl.sandbox.schema import (
    AssertTests,
    CaseResult,
    EvaluateRequest,
    EvaluateResponse,
    RunCodeRequest,
    RunCodeResponse,
    RunResult,
)

_JAIL_SCRIPT = str(Path(__file__).with_name("jail.py"))  # run as a script, never imported
_UID_BASE = 1 << 20  # jails run as a random uid in [2^20, 2^20 + 2^24): no user on the machine
_DETAIL_CHARS = 2000


@dataclass(frozen=True)
class Limits:
    """Limits of one jailed run; each process of the jail gets the rlimits."""

    timeout_s: float = 10.0  # wall clock; then every process of the jail is killed
    memory_mb: int = 1024  # address space of each process
    processes: int = 32  # processes and threads of the jail's user
    file_size_mb: int = 16  # largest file a process may write
    open_files: int = 64
    disk_mb: int = 64  # the jail's tmpfs: working directory, /tmp and the request's files
    output_bytes: int = 1 << 20  # stdout and stderr, each; one byte more and the jail is killed


@functools.cache
def _host_paths() -> tuple[str, str, list[str]]:
    """(python, its prefix, directories to hide): the jail runs this interpreter's standard
    library but none of the packages installed beside it."""
    python = os.path.realpath(sys.executable)
    hide = {*site.getsitepackages(), site.getusersitepackages()}
    hide |= {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    return python, sys.base_prefix, sorted(hide)


class _Jail:
    """One jailed process: ``unshare`` → ``jail.py`` as PID 1 of new namespaces, in its own
    process group. Collects its stdout/stderr and whether the jail finished its setup."""

    def __init__(
        self,
        role: str,
        limits: Limits,
        base_dir: Path,
        files: dict[str, bytes],
        stdin: bytes = b"",
        fds: tuple[int, ...] = (),
        packages: bool = False,
    ) -> None:
        self.stdin = stdin
        self.packages = packages
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self.ready = self.exceeded = False
        self.wall_s = 0.0
        self.start = time.monotonic()
        self.stage = Path(tempfile.mkdtemp(prefix="reasonrl-jail-", dir=base_dir))
        self.ready_fd, ready_w = os.pipe()
        try:
            self.popen = self._spawn(role, limits, files, ready_w, fds)
        except BaseException:
            os.close(self.ready_fd)
            shutil.rmtree(self.stage, ignore_errors=True)
            raise
        finally:
            os.close(ready_w)

    def _spawn(
        self,
        role: str,
        limits: Limits,
        files: dict[str, bytes],
        ready_w: int,
        fds: tuple[int, ...],
    ) -> subprocess.Popen:
        (self.stage / "root").mkdir()
        work = self.stage / "files"
        work.mkdir()
        for name, data in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        python, prefix, hide = _host_paths()
        cfg = {
            "role": role,
            "root": str(self.stage / "root"),
            "files": str(work),
            "prefix": prefix,
            "hide": [] if self.packages else hide,
            "uid": _UID_BASE + secrets.randbelow(1 << 24),
            "ready_fd": ready_w,
            "fds": list(fds),
            "memory_mb": limits.memory_mb,
            "cpu_s": int(limits.timeout_s) + 1,
            "processes": limits.processes,
            "file_size_mb": limits.file_size_mb,
            "open_files": limits.open_files,
            "disk_mb": limits.disk_mb,
        }
        ns = ["--pid", "--net", "--mount", "--ipc", "--uts", "--fork", "--kill-child"]
        cmd = ["unshare", *ns, "--", python, "-I", "-S", _JAIL_SCRIPT, json.dumps(cfg)]
        return subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(ready_w, *fds),
            start_new_session=True,
            env={},
        )

    def text(self, stream: str) -> str:
        return self.out[stream].decode("utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL the jail's PID 1 (which takes every process of its namespace with it), then
        wait for ``unshare`` to report that the namespace is gone."""
        if self.popen.poll() is not None:
            return
        pid = self.popen.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            self.popen.wait()

    def close(self) -> None:
        """Kill what is left, read the ready byte if it came, delete the staging directory."""
        self.kill()
        self.popen.wait()
        self.wall_s = time.monotonic() - self.start
        for f in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if f is not None and not f.closed:
                f.close()
        if not self.ready:
            os.set_blocking(self.ready_fd, False)
            with contextlib.suppress(BlockingIOError):
                self.ready = os.read(self.ready_fd, 1) == b"R"
        os.close(self.ready_fd)
        shutil.rmtree(self.stage, ignore_errors=True)


def _supervise(jails: list[_Jail], main: _Jail, limits: Limits) -> bool:
    """Feed stdin and read stdout, stderr and the ready pipe of every jail until ``main`` has
    ended or the deadline passes; kill a jail whose output exceeds the cap, and every jail once
    ``main`` is done. Returns whether the deadline passed."""
    deadline = time.monotonic() + limits.timeout_s
    sel = selectors.DefaultSelector()
    for j in jails:
        for name in ("stdout", "stderr"):
            stream = getattr(j.popen, name)
            os.set_blocking(stream.fileno(), False)
            sel.register(stream.fileno(), selectors.EVENT_READ, (j, name))
        sel.register(j.ready_fd, selectors.EVENT_READ, (j, "ready"))
        if j.stdin:
            os.set_blocking(j.popen.stdin.fileno(), False)
            sel.register(j.popen.stdin.fileno(), selectors.EVENT_WRITE, (j, "stdin"))
        else:
            j.popen.stdin.close()
    main_streams = {main.popen.stdout.fileno(), main.popen.stderr.fileno()}
    timed_out = False
    while main_streams:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(left):
            j, name = key.data
            if name == "stdin":
                try:
                    j.stdin = j.stdin[os.write(key.fd, j.stdin[: 1 << 16]) :]
                except BrokenPipeError:
                    j.stdin = b""
                if not j.stdin:
                    sel.unregister(key.fd)
                    j.popen.stdin.close()
                continue
            chunk = os.read(key.fd, 1 << 16)
            if name == "ready":
                j.ready = j.ready or chunk == b"R"
                sel.unregister(key.fd)
                continue
            j.out[name] += chunk
            if not chunk or len(j.out[name]) > limits.output_bytes:
                sel.unregister(key.fd)
                main_streams.discard(key.fd)
            if len(j.out[name]) > limits.output_bytes:
                del j.out[name][limits.output_bytes :]
                j.exceeded = True
                j.kill()
    sel.close()
    if not timed_out:
        try:
            main.popen.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            timed_out = True
    for j in jails:
        j.kill()
    return timed_out


def _same_output(got: str, expected: str) -> bool:
    def norm(text: str) -> list[str]:
        return [line.rstrip() for line in text.rstrip().splitlines()]

    return norm(got) == norm(expected)


def _tail(text: str) -> str:
    return text[-_DETAIL_CHARS:]


class Sandbox:
    """Runs Python in jails on this machine; the server's engine and the in-process runner.

    Thread-safe: each call builds its own jails (callers bound the concurrency). ``base_dir``
    holds each run's staging directory while it runs (default: the system temp directory).
    """

    def __init__(self, limits: Limits | None = None, base_dir: str | Path | None = None) -> None:
        self.limits = limits or Limits()
        self.base_dir = Path(base_dir or tempfile.gettempdir())

    def _limits(self, timeout: float | None, memory_mb: int | None = None) -> Limits:
        return replace(
            self.limits,
            timeout_s=timeout or self.limits.timeout_s,
            memory_mb=memory_mb or self.limits.memory_mb,
        )

    def _run_program(
        self, code: str, files: dict[str, bytes], stdin: str, limits: Limits, packages: bool = False
    ) -> tuple[_Jail, bool]:
        files = {**files, "main.py": code.encode()}
        j = _Jail("exec", limits, self.base_dir, files, stdin.encode(), packages=packages)
        try:
            timed_out = _supervise([j], j, limits)
        finally:
            j.close()
        return j, timed_out

    def run_code(self, req: RunCodeRequest) -> RunCodeResponse:
        """Run ``req.code`` as ``main.py`` in a fresh jail (SandboxFusion's ``/run_code``)."""
        limits = self._limits(req.run_timeout, req.memory_limit_MB)
        files = {name: base64.b64decode(data) for name, data in req.files.items()}
        j, timed_out = self._run_program(req.code, files, req.stdin or "", limits, req.packages)
        if not j.ready:
            return RunCodeResponse(status="SandboxError", message=_tail(j.text("stderr")))
        code = j.popen.returncode
        if timed_out or code == -signal.SIGXCPU:
            status, message, code = "TimeLimitExceeded", "time limit exceeded", None
        elif j.exceeded:
            status, message = "Error", f"output exceeded {limits.output_bytes} bytes; killed"
            code = None
        else:
            status, message = "Finished", ""
        result = RunResult(
            status=status,
            return_code=code,
            stdout=j.text("stdout"),
            stderr=j.text("stderr"),
            execution_time=round(j.wall_s, 4),
        )
        ok = status == "Finished" and code == 0
        return RunCodeResponse(
            status="Success" if ok else "Failed", message=message, run_result=result
        )

    def evaluate(self, req: EvaluateRequest) -> EvaluateResponse:
        """Run ``req.code`` against ``req.tests``; the verdict never depends on what the
        candidate prints (asserts) or can read (io: the expected output stays here)."""
        limits = self._limits(req.timeout)
        if isinstance(req.tests, AssertTests):
            detail = self._run_asserts(req.code, req.tests, limits)
            return EvaluateResponse(
                status=detail.status,
                passed=int(detail.status == "passed"),
                total=1,
                details=[detail],
            )
        details = []
        for case in req.tests.cases:
            j, timed_out = self._run_program(req.code, {}, case.stdin, limits)
            if not j.ready:
                details.append(CaseResult(status="error", reason=_tail(j.text("stderr"))))
            elif timed_out or j.popen.returncode == -signal.SIGXCPU:
                details.append(CaseResult(status="timeout", reason="time limit exceeded"))
            elif j.exceeded:
                details.append(CaseResult(status="failed", reason="output limit exceeded"))
            elif j.popen.returncode != 0:
                reason = f"exit status {j.popen.returncode}: {_tail(j.text('stderr'))}"
                details.append(CaseResult(status="failed", reason=reason))
            elif not _same_output(j.text("stdout"), case.expected_stdout):
                details.append(CaseResult(status="failed", reason="wrong output"))
            else:
                details.append(CaseResult(status="passed"))
            if details[-1].status in ("timeout", "error"):
                break
        statuses = {d.status for d in details}
        passed = sum(d.status == "passed" for d in details)
        total = len(req.tests.cases)
        status = next((s for s in ("error", "timeout") if s in statuses), None)
        status = status or ("passed" if passed == total else "failed")
        return EvaluateResponse(status=status, passed=passed, total=total, details=details)

    def _run_asserts(self, code: str, tests: AssertTests, limits: Limits) -> CaseResult:
        nonce = secrets.token_hex(16)
        payload = {"test_code": tests.test_code, "entry_point": tests.entry_point, "nonce": nonce}
        to_runner_r, to_runner_w = os.pipe()
        to_harness_r, to_harness_w = os.pipe()
        jails: list[_Jail] = []
        try:
            try:
                files = {"solution.py": code.encode()}
                runner_fds = (to_runner_r, to_harness_w)
                jails.append(_Jail("runner", limits, self.base_dir, files, fds=runner_fds))
                harness_fds = (to_harness_r, to_runner_w)
                stdin = json.dumps(payload).encode()
                jails.append(_Jail("harness", limits, self.base_dir, {}, stdin, harness_fds))
            finally:  # the jails hold their own copies of the pipes
                for fd in (to_runner_r, to_runner_w, to_harness_r, to_harness_w):
                    os.close(fd)
            runner, harness = jails
            timed_out = _supervise(jails, harness, limits)
        finally:
            for j in jails:
                j.close()
        broken = next((j for j in jails if not j.ready), None)
        if broken is not None:
            return CaseResult(status="error", reason=_tail(broken.text("stderr")))
        if timed_out or runner.popen.returncode == -signal.SIGXCPU:
            return CaseResult(status="timeout", reason="time limit exceeded")
        lines = harness.text("stdout").strip().splitlines()
        try:
            verdict = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            verdict = {}
        if verdict.get("nonce") != nonce:
            return CaseResult(status="failed", reason="the harness ended without a verdict")
        if verdict.get("verdict") == "passed" and harness.popen.returncode == 0:
            return CaseResult(status="passed")
        return CaseResult(status="failed", reason=str(verdict.get("reason", "")))


@functools.cache
def isolation_problem() -> str | None:
    """Why jails cannot be built on this machine, or None when a probe jail ran fine."""
    if not sys.platform.startswith("linux"):
        return "the sandbox needs Linux namespaces"
    if os.geteuid() != 0:
        return "the sandbox must start as root (it builds namespaces, then drops to a random uid)"
    if shutil.which("unshare") is None:
        return "util-linux 'unshare' is not installed"
    probe = Sandbox().run_code(RunCodeRequest(code="print(6 * 7)"))
    if probe.run_result is None or probe.run_result.stdout.strip() != "42":
        return f"a probe jail failed: {probe.message or probe.run_result}"
    return None
