"""The sandbox's engine: run code in jails on this machine and turn what happened into verdicts.

The server calls it from its worker threads; single-machine runs call it in-process through
:class:`Sandbox` with exactly the same isolation (described in :mod:`reasonrl.sandbox`).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
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
from collections.abc import Iterator
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

_UID_BASE = 1 << 20  # jails run as a random uid in [2^20, 2^20 + 2^24): no user on the machine
_DETAIL_CHARS = 2000


@dataclass(frozen=True)
class Limits:
    """Limits of one jailed run; each process of the jail gets the rlimits."""

    timeout_s: float = 10.0  # wall clock; then every process of the jail is killed
    # address space of each process (a request's ask is capped to request_memory_mb)
    memory_mb: int = 1024
    processes: int = 32  # processes and threads of the jail's user
    file_size_mb: int = 16  # largest file a process may write
    open_files: int = 64
    disk_mb: int = 64  # the jail's tmpfs: working directory, /tmp and the request's files
    output_bytes: int = 1 << 20  # stdout and stderr, each; one byte more and the jail is killed
    # All processes of one request together: a memory cgroup's limit where the host lets the
    # server make one, else a bound on processes x memory_mb (fewer processes per jail).
    request_memory_mb: int = 4096


_BOUND = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # jail.py binds them


@dataclass(frozen=True)
class _Host:
    """What of this machine the jails use: found once per server."""

    unshare: str
    python: str  # the base interpreter (a virtualenv's python is a link to it)
    prefix: str  # its prefix: the standard library comes from there
    hide: tuple[str, ...]  # every site-packages and dist-packages directory the jail would show
    site_dirs: tuple[str, ...]  # the server's own site directories: for trusted requests only


@functools.cache
def _host() -> _Host:
    python = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    # Every site-packages and dist-packages directory in what the jail binds: a walk (a second
    # or two, once per process), since bundled interpreters put theirs anywhere under /usr.
    hide = set()
    for root in (*_BOUND, prefix):
        if os.path.islink(root):  # /lib -> usr/lib: walked as /usr
            continue
        for base, dirs, _ in os.walk(root):
            packages = [d for d in dirs if d in ("site-packages", "dist-packages")]
            hide.update(os.path.join(base, d) for d in packages)
            dirs[:] = [d for d in dirs if d not in packages]
    # A virtualenv's, a conda environment's and `pip install --user`'s packages: wherever this
    # interpreter itself imports them from.
    sites = {*site.getsitepackages(), *sysconfig.get_paths().values()}
    if site.ENABLE_USER_SITE:
        sites.add(site.getusersitepackages())
    site_dirs = sorted(
        os.path.realpath(p)
        for p in sites
        if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)
    )
    return _Host(
        shutil.which("unshare") or "unshare",
        python,
        prefix,
        tuple(sorted(hide)),
        tuple(site_dirs),
    )


@functools.cache
def _cgroup_parent() -> Path | None:
    """Where this process may make memory cgroups (its own memory cgroup, v1 or v2), or None
    when the host does not allow it (no controller, read-only, not root)."""
    own = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            own[controllers] = path
    candidates = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields, _, tail = line.partition(" - ")
            fields, tail = fields.split(), tail.split()
            mount_root, mount_point, fstype = fields[3], fields[4], tail[0]
            if fstype == "cgroup" and "memory" in tail[2].split(","):
                path = next((p for c, p in own.items() if "memory" in c.split(",")), None)
            elif fstype == "cgroup2":
                path = own.get("")
            else:
                continue
            if path is not None and path.startswith(mount_root):
                rel = path[len(mount_root) :].lstrip("/")
                candidates.append(Path(mount_point) / rel)
    for parent in candidates:
        try:
            with _memory_cgroup(parent, 64):
                return parent
        except OSError:
            continue
    return None


@contextlib.contextmanager
def _memory_cgroup(parent: Path, limit_mb: int) -> Iterator[Path]:
    """A fresh memory cgroup under ``parent`` limited to ``limit_mb`` (no swap); removed after."""
    group = parent / f"reasonrl-{secrets.token_hex(8)}"
    group.mkdir()
    try:
        if (group / "memory.limit_in_bytes").exists():  # cgroup v1
            files = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
        elif (group / "memory.max").exists():  # cgroup v2
            files = ("memory.max", "memory.swap.max")
        else:
            raise OSError(f"{parent} has no memory controller")
        (group / files[0]).write_text(str(limit_mb << 20))
        if (group / files[1]).exists():
            (group / files[1]).write_text(
                "0" if files[1] == "memory.swap.max" else str(limit_mb << 20)
            )
        yield group
    finally:
        # The namespace's processes are gone once its init was reaped; the kernel may take a
        # moment more to let the group go.
        for _ in range(50):
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


def _pipe_holding(data: bytes) -> int:
    """The read end of a pipe that already holds ``data`` (and is closed for writing)."""
    r, w = os.pipe()
    try:
        if len(data) > 1 << 16:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, len(data))
        os.write(w, data)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    return r


# PID 1's command line: the jail's source and configuration come through the two pipes whose
# descriptors follow, so that nothing of the host is in it.
_BOOT = "import sys; exec(compile(open(int(sys.argv[1])).read(), 'jail.py', 'exec'))"
_JAIL_SOURCE = Path(__file__).with_name("jail.py").read_bytes()  # run, never imported
_DIAG_BYTES = 1 << 16  # kept of the jail's own diagnostics


class _Jail:
    """One jailed process: ``unshare`` → ``jail.py`` as PID 1 of new namespaces, in its own
    process group. Collects its stdout/stderr, its diagnostics, whether the jail finished its
    setup and how the program ended."""

    def __init__(
        self,
        role: str,
        limits: Limits,
        base_dir: Path,
        files: dict[str, bytes],
        stdin: bytes = b"",
        fds: tuple[int, ...] = (),
        packages: bool = False,
        cgroup: Path | None = None,
    ) -> None:
        self.stdin = stdin
        self.out = {"stdout": bytearray(), "stderr": bytearray(), "diag": bytearray()}
        self.control = bytearray()  # b"R" once ready, then b"X<exit status>" from the init
        self.exceeded = False
        self.wall_s = 0.0
        self.start = time.monotonic()
        self.stage = Path(tempfile.mkdtemp(prefix="reasonrl-jail-", dir=base_dir))
        self.control_fd, control_w = os.pipe()
        self.stderr_fd, stderr_w = os.pipe()
        try:
            self.popen = self._spawn(
                role, limits, files, control_w, stderr_w, fds, packages, cgroup
            )
        except BaseException:
            os.close(self.control_fd)
            os.close(self.stderr_fd)
            shutil.rmtree(self.stage, ignore_errors=True)
            raise
        finally:
            os.close(control_w)
            os.close(stderr_w)

    def _spawn(
        self,
        role: str,
        limits: Limits,
        files: dict[str, bytes],
        control_w: int,
        stderr_w: int,
        fds: tuple[int, ...],
        packages: bool,
        cgroup: Path | None,
    ) -> subprocess.Popen:
        (self.stage / "root").mkdir()
        work = self.stage / "files"
        work.mkdir()
        for name, data in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        host = _host()
        cfg = {
            "role": role,
            "root": str(self.stage / "root"),
            "files": str(work),
            "prefix": host.prefix,
            "hide": [] if packages else host.hide,
            "site_dirs": host.site_dirs if packages else [],
            "cgroup": None if cgroup is None else str(cgroup),
            "uid": _UID_BASE + secrets.randbelow(1 << 24),
            "control_fd": control_w,
            "stderr_fd": stderr_w,
            "fds": list(fds),
            "memory_mb": limits.memory_mb,
            "cpu_s": int(limits.timeout_s) + 1,
            "processes": limits.processes,
            "file_size_mb": limits.file_size_mb,
            "open_files": limits.open_files,
            "disk_mb": limits.disk_mb,
        }
        source_r = _pipe_holding(_JAIL_SOURCE)
        try:
            config_r = _pipe_holding(json.dumps(cfg).encode())
        except BaseException:
            os.close(source_r)
            raise
        ns = ["--pid", "--net", "--mount", "--ipc", "--uts", "--fork", "--kill-child"]
        python = os.path.basename(host.python)
        cmd = [
            host.unshare,
            *ns,
            "--",
            python,
            "-I",
            "-S",
            "-c",
            _BOOT,
            str(source_r),
            str(config_r),
        ]
        try:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,  # unshare's and the jail's diagnostics, never the program's
                pass_fds=(source_r, config_r, control_w, stderr_w, *fds),
                start_new_session=True,
                env={"PATH": os.path.dirname(host.python)},
            )
        finally:
            os.close(source_r)
            os.close(config_r)

    @property
    def ready(self) -> bool:
        """Whether the jail was built and the program started (the rest is the program's)."""
        return self.control.startswith(b"R")

    @property
    def returncode(self) -> int | None:
        """The program's exit status as its init saw it (negative: the signal that killed it);
        None when the jail was killed first (deadline, output cap)."""
        if not self.control.startswith(b"RX"):
            return None
        try:
            return int(self.control[2:])
        except ValueError:
            return None

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
        """Kill what is left, read what the control pipe still holds, delete the staging
        directory."""
        self.kill()
        self.popen.wait()
        self.wall_s = time.monotonic() - self.start
        for f in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if f is not None and not f.closed:
                f.close()
        os.set_blocking(self.control_fd, False)
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.control_fd, 64):
                self.control += chunk
        os.close(self.control_fd)
        os.close(self.stderr_fd)
        shutil.rmtree(self.stage, ignore_errors=True)


def _supervise(jails: list[_Jail], main: _Jail, limits: Limits) -> bool:
    """Feed stdin and read stdout, stderr, diagnostics and the control pipe of every jail until
    ``main`` has ended or the deadline passes; kill a jail whose output exceeds the cap, and
    every jail once ``main`` is done. Returns whether the deadline passed."""
    deadline = time.monotonic() + limits.timeout_s
    sel = selectors.DefaultSelector()
    for j in jails:
        streams = {
            j.popen.stdout.fileno(): "stdout",
            j.stderr_fd: "stderr",
            j.popen.stderr.fileno(): "diag",
            j.control_fd: "control",
        }
        for fd, name in streams.items():
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, (j, name))
        if j.stdin:
            os.set_blocking(j.popen.stdin.fileno(), False)
            sel.register(j.popen.stdin.fileno(), selectors.EVENT_WRITE, (j, "stdin"))
        else:
            j.popen.stdin.close()
    main_streams = {main.popen.stdout.fileno(), main.stderr_fd}
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
            if not chunk:
                sel.unregister(key.fd)
                main_streams.discard(key.fd)
            elif name == "control":
                j.control += chunk
            elif name == "diag":
                j.out["diag"] += chunk[: _DIAG_BYTES - len(j.out["diag"])]
            else:
                j.out[name] += chunk
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

    def __init__(
        self,
        limits: Limits | None = None,
        base_dir: str | Path | None = None,
        memory_cgroups: bool = True,
    ) -> None:
        self.limits = limits or Limits()
        self.base_dir = Path(base_dir or tempfile.gettempdir())
        # False: the processes x memory bound even where cgroups work
        self.memory_cgroups = memory_cgroups

    def memory_bound(self) -> str:
        """How a request's memory is bounded on this machine, in words (``serve`` says it)."""
        lim = self.limits
        parent = _cgroup_parent() if self.memory_cgroups else None
        if parent is not None:
            return f"{lim.request_memory_mb} MB per request (a memory cgroup under {parent})"
        bounded = self._bounded(self._limits(None), jails=1)
        return (
            f"{lim.request_memory_mb} MB per request as processes x address space "
            f"(no memory cgroup here: {bounded.processes} processes of {bounded.memory_mb} MB "
            "at the default memory)"
        )

    def _limits(self, timeout: float | None, memory_mb: int | None = None) -> Limits:
        lim = self.limits
        memory = min(memory_mb or lim.memory_mb, lim.request_memory_mb)
        return replace(lim, timeout_s=timeout or lim.timeout_s, memory_mb=memory)

    @staticmethod
    def _bounded(limits: Limits, jails: int) -> Limits:
        """Without a cgroup: fewer processes (and less memory each) so that ``jails`` jails
        together stay within ``request_memory_mb``."""
        memory = max(1, min(limits.memory_mb, limits.request_memory_mb // jails))
        processes = min(limits.processes, limits.request_memory_mb // (memory * jails))
        return replace(limits, memory_mb=memory, processes=max(1, processes))

    @contextlib.contextmanager
    def _request(self, limits: Limits, jails: int) -> Iterator[tuple[Limits, Path | None]]:
        """The limits of each of a request's ``jails`` jails and the memory cgroup they all
        join (None: bounded by processes x memory instead)."""
        parent = _cgroup_parent() if self.memory_cgroups else None
        if parent is None:
            yield self._bounded(limits, jails), None
            return
        with _memory_cgroup(parent, limits.request_memory_mb) as group:
            yield limits, group

    def _run_program(
        self, code: str, files: dict[str, bytes], stdin: str, limits: Limits, packages: bool = False
    ) -> tuple[_Jail, bool]:
        files = {**files, "main.py": code.encode()}
        with self._request(limits, jails=1) as (limits, group):
            j = _Jail(
                "exec",
                limits,
                self.base_dir,
                files,
                stdin.encode(),
                packages=packages,
                cgroup=group,
            )
            try:
                timed_out = _supervise([j], j, limits)
            finally:
                j.close()
        return j, timed_out

    def run_code(self, req: RunCodeRequest) -> RunCodeResponse:
        """Run ``req.code`` as ``main.py`` in a fresh jail (SandboxFusion's ``/run_code``).

        Outcomes as SandboxFusion's server gives them, so that its client accepts them: past
        the deadline (or the CPU limit), run status ``TimeLimitExceeded`` with no return code;
        otherwise ``Finished`` with the exit status, negative for the signal that killed the
        program (``-9`` when the sandbox killed it for output over the cap or the memory cgroup
        did); ``Success`` only for ``Finished`` with 0; ``SandboxError`` when the jail could not
        be built (no run result)."""
        limits = self._limits(req.run_timeout, req.memory_limit_MB)
        files = {
            name: base64.b64decode(data) for name, data in req.files.items() if data is not None
        }
        j, timed_out = self._run_program(req.code, files, req.stdin or "", limits, req.packages)
        if not j.ready:
            return RunCodeResponse(status="SandboxError", message=_tail(j.text("diag")))
        code = j.returncode
        if timed_out or code == -signal.SIGXCPU:
            status, message, code = "TimeLimitExceeded", "time limit exceeded", None
        elif j.exceeded:
            status, message, code = (
                "Finished",
                f"output exceeded {limits.output_bytes} bytes; killed",
                -signal.SIGKILL,
            )
        else:
            status, message = "Finished", ""
            code = -signal.SIGKILL if code is None else code  # the init died first: killed
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
                details.append(CaseResult(status="error", reason=_tail(j.text("diag"))))
            elif timed_out or j.returncode == -signal.SIGXCPU:
                details.append(CaseResult(status="timeout", reason="time limit exceeded"))
            elif j.exceeded:
                details.append(CaseResult(status="failed", reason="output limit exceeded"))
            elif j.returncode != 0:
                reason = f"exit status {j.returncode}: {_tail(j.text('stderr'))}"
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
        with self._request(limits, jails=2) as (limits, group):
            try:
                try:
                    files = {"solution.py": code.encode()}
                    runner_fds = (to_runner_r, to_harness_w)
                    jails.append(
                        _Jail("runner", limits, self.base_dir, files, fds=runner_fds, cgroup=group)
                    )
                    harness_fds = (to_harness_r, to_runner_w)
                    stdin = json.dumps(payload).encode()
                    jails.append(
                        _Jail(
                            "harness", limits, self.base_dir, {}, stdin, harness_fds, cgroup=group
                        )
                    )
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
            return CaseResult(status="error", reason=_tail(broken.text("diag")))
        if timed_out or runner.returncode == -signal.SIGXCPU:
            return CaseResult(status="timeout", reason="time limit exceeded")
        lines = harness.text("stdout").strip().splitlines()
        try:
            verdict = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            verdict = {}
        if verdict.get("nonce") != nonce:
            return CaseResult(status="failed", reason="the harness ended without a verdict")
        if verdict.get("verdict") == "passed" and harness.returncode == 0:
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
