"""The code that runs inside a sandbox jail. Standard library only.

``runner.py`` starts it as ``unshare --pid --net --mount --ipc --uts --fork --kill-child --
python3.X -I -S -c BOOT SOURCE_FD CONFIG_FD``: ``BOOT`` executes this file's source read from a
pipe, and the configuration comes through another pipe, so the command line of the jail's PID 1
names no host path (the interpreter is found through ``PATH``, which only PID 1 can read). It
begins as root, as PID 1 of fresh namespaces, and then:

1. joins the request's memory cgroup (when the server has one), then builds a new root on a
   size-capped tmpfs: read-only, nosuid bind mounts of ``/usr`` (and the ``/bin``, ``/lib*``
   links or directories) and of the Python prefix, with every site-packages and dist-packages
   directory hidden under an empty read-only tmpfs (a trusted request with ``packages`` gets the
   server's own site directories instead, read-only); ``/dev`` with null, zero, random, urandom
   only; a fresh ``/proc`` of the new PID namespace; a writable ``/tmp`` and ``/sandbox`` (the
   working directory, holding the request's files); and ``chroot``s into it;
2. forks the worker and stays as a tiny init: it reaps orphans, and when the worker ends it
   reports the worker's exit status on the control pipe and exits, which kills every process
   left in the namespace (a fork bomb, a background daemon);
3. the worker sets the rlimits (address space, CPU seconds, processes, file size, open files,
   core dumps), drops to the unprivileged ``uid`` given by the server with no supplementary
   groups, sets ``no_new_privs`` and the parent-death signal, writes ``R`` on the control pipe and
   closes it: from here on, any failure is the candidate's, not the sandbox's, so a candidate
   cannot pass itself off as an infrastructure error, nor forge its exit status. Until then its
   stderr is the jail's diagnostics stream; then the program's own stderr pipe replaces it, so
   diagnostics of the jail (and of ``unshare``) never mix with the program's output;
4. the worker plays its role:
   - ``exec``: run ``/sandbox/main.py`` as ``__main__`` (stdin, stdout, stderr are the request's);
   - ``runner``: execute ``/sandbox/solution.py`` and then serve calls of its functions over
     two pipes, exchanging plain data only (``marshal`` of builtin types);
   - ``harness``: read ``{test_code, entry_point, nonce}`` from stdin, run the tests against
     proxies of the runner's functions, and print the verdict with the nonce as the last line.

The harness and the runner are separate jails with separate users and PID namespaces: tests
never run in the candidate's process, so nothing the candidate does (``exit(0)``, patched
``sys.stdout``, objects whose ``__eq__`` is always true) reaches the harness except return values,
which are rebuilt from marshal data and must be of exact builtin types.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import marshal
import os
import resource
import shutil
import signal
import struct
import sys
import traceback

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38

SETUP_FAILED = 125  # exit status when the jail could not be built (before ready_fd is written)
MAX_MESSAGE = 16 << 20  # bytes of one marshal message between harness and runner
PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str = "") -> None:
    enc = [None if s is None else s.encode() for s in (src, dst, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {dst}")


def _bind_ro(src: str, dst: str) -> None:
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        open(dst, "a").close()
    _mount(src, dst, None, MS_BIND | MS_REC)
    _mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def join_cgroup(cfg: dict) -> None:
    """Move this process (and so everything it will start) into the request's memory cgroup."""
    if cfg["cgroup"]:
        with open(os.path.join(cfg["cgroup"], "cgroup.procs"), "w") as f:
            f.write("0")  # 0: the writing process, whatever its PID in this namespace


def build_root(cfg: dict) -> None:
    """Mount the jail's filesystem at ``cfg["root"]`` (an empty directory) and chroot into it."""
    root = cfg["root"]
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['disk_mb']}m,mode=755")
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        src, dst = f"/{name}", f"{root}/{name}"
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            _bind_ro(src, dst)
    for path in [cfg["prefix"], *cfg["site_dirs"]]:
        if not os.path.exists(root + path):
            _bind_ro(path, root + path)
    for hidden in cfg["hide"]:
        if os.path.isdir(root + hidden):
            _mount("tmpfs", root + hidden, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
    dev = f"{root}/dev"
    os.mkdir(dev)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
    for node in ("null", "zero", "random", "urandom"):
        open(f"{dev}/{node}", "w").close()
        _mount(f"/dev/{node}", f"{dev}/{node}", None, MS_BIND)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{dev}/{name}")
    os.symlink("/proc/self/fd", f"{dev}/fd")
    os.mkdir(f"{root}/proc")
    _mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # A site directory bound above may live under /tmp (a venv made in a temporary directory,
    # as CI does), so /tmp can exist already: the binds in it stay read-only, the rest writable.
    os.makedirs(f"{root}/tmp", exist_ok=True)
    os.chmod(f"{root}/tmp", 0o1777)
    work = f"{root}/sandbox"
    shutil.copytree(cfg["files"], work)
    for base, dirs, files in os.walk(work):
        for name in [base, *(os.path.join(base, x) for x in dirs + files)]:
            os.chown(name, cfg["uid"], cfg["uid"])
    os.chmod(work, 0o700)
    os.chroot(root)
    os.chdir("/sandbox")


def drop_privileges(cfg: dict) -> None:
    """Set the rlimits, become ``cfg["uid"]`` with no groups and no way to regain privileges."""
    limits = {
        resource.RLIMIT_AS: cfg["memory_mb"] << 20,
        resource.RLIMIT_CPU: cfg["cpu_s"],
        resource.RLIMIT_NPROC: cfg["processes"],
        resource.RLIMIT_FSIZE: cfg["file_size_mb"] << 20,
        resource.RLIMIT_NOFILE: cfg["open_files"],
        resource.RLIMIT_CORE: 0,
    }
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))
    uid = cfg["uid"]
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    # Changing credentials clears the parent-death signal.
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")


# ----------------------------------------------------------------- harness <-> runner messages


def send(fd: int, payload: bytes) -> None:
    """Write one length-prefixed message."""
    data = struct.pack(">I", len(payload)) + payload
    while data:
        data = data[os.write(fd, data) :]


def _read_exactly(fd: int, n: int) -> bytes | None:
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def receive(fd: int) -> bytes | None:
    """Read one length-prefixed message; None at end of file. Oversized messages raise."""
    head = _read_exactly(fd, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes exceeds {MAX_MESSAGE}")
    return _read_exactly(fd, size)


def check_plain(value: object, limit: int = 1_000_000) -> None:
    """Raise TypeError unless ``value`` is built only of exact builtin data types
    (subclasses, whose ``__eq__`` could lie, are refused)."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            raise TypeError("value too large")
        kind = type(item)
        if kind not in PLAIN_TYPES:
            raise TypeError(f"{kind.__name__} is not plain data")
        if kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind in (tuple, list, set, frozenset):
            stack.extend(item)


def serve_calls(rfd: int, wfd: int) -> None:
    """The runner: execute the solution, then answer ``("call", name, args, kwargs)`` messages
    with ``("ok", value)`` or ``("raise", exception_name, message)`` until end of file."""
    namespace: dict = {"__name__": "solution", "__builtins__": builtins}
    try:
        with open("solution.py") as f:
            exec(compile(f.read(), "solution.py", "exec"), namespace)
    except BaseException as e:  # SystemExit too: the solution ended before it could be tested
        send(wfd, marshal.dumps(("error", f"{type(e).__name__}: {_describe(e)}")))
        return
    names = [k for k, v in namespace.items() if callable(v) and not k.startswith("__")]
    send(wfd, marshal.dumps(("ready", names)))
    while (message := receive(rfd)) is not None:
        _, name, args, kwargs = marshal.loads(message)
        try:
            reply = ("ok", namespace[name](*args, **kwargs))
        except BaseException as e:
            reply = ("raise", type(e).__name__, _describe(e))
        try:
            payload = marshal.dumps(reply)
        except ValueError:  # "unmarshallable object": not plain data, or a subclass of it
            payload = marshal.dumps(("raise", "TypeError", "the function returned non-plain data"))
        send(wfd, payload)


def _describe(error: BaseException) -> str:
    try:
        return str(error)[:2000]
    except BaseException:
        return "<unprintable>"


class RemoteError(Exception):
    """An exception raised in the runner whose type is not a builtin exception."""


class Remote:
    """A proxy for one of the solution's functions: calls go to the runner as plain data."""

    def __init__(self, name: str, wfd: int, rfd: int) -> None:
        self.__name__, self._wfd, self._rfd = name, wfd, rfd

    def __call__(self, *args: object, **kwargs: object) -> object:
        send(self._wfd, marshal.dumps(("call", self.__name__, args, kwargs)))
        reply = receive(self._rfd)
        if reply is None:
            raise RemoteError(f"the solution process ended during a call of {self.__name__}")
        message = marshal.loads(reply)
        check_plain(message)
        if type(message) is not tuple or not message:
            raise RemoteError("malformed reply")
        if message[0] == "ok" and len(message) == 2:
            return message[1]
        if message[0] == "raise" and len(message) == 3:
            # Builtin exceptions are re-raised as themselves, so the tests can expect them,
            # except those that end iteration: a StopIteration out of a call inside map() or a
            # generator would end the tests' loop early, as if the remaining cases had passed.
            kind = getattr(builtins, str(message[1]), None)
            safe = isinstance(kind, type) and issubclass(kind, Exception)
            if safe and issubclass(kind, StopIteration | StopAsyncIteration):
                safe = False
            raise (kind if safe else RemoteError)(message[2])
        raise RemoteError("malformed reply")


def run_harness(rfd: int, wfd: int) -> None:
    """Run the request's tests against the runner; print ``{"nonce", "verdict", "reason"}``
    as the last line of stdout. Every failure, however caused, is a "failed" verdict."""
    request = json.loads(sys.stdin.read())
    nonce = request.pop("nonce")
    verdict, reason = "failed", ""
    try:
        first = receive(rfd)
        hello = None if first is None else marshal.loads(first)
        check_plain(hello)
        if type(hello) is not tuple or len(hello) != 2 or hello[0] != "ready":
            detail = hello[1] if type(hello) is tuple and len(hello) == 2 else "no reply"
            raise RemoteError(f"the solution did not load: {detail}")
        # The solution's functions, except any that would shadow a builtin the tests rely on
        # (a solution defining abs() that returns 0 must not pass abs(f(x) - y) < 1e-6).
        names = [n for n in hello[1] if type(n) is str and not hasattr(builtins, n)]
        namespace: dict = {"__name__": "tests", **{n: Remote(n, wfd, rfd) for n in names}}
        exec(compile(request["test_code"], "tests.py", "exec"), namespace)
        entry = request.get("entry_point")
        if entry and callable(namespace.get("check")):
            if entry not in namespace:
                raise RemoteError(f"the solution does not define {entry!r}")
            namespace["check"](namespace[entry])
        verdict = "passed"
    except BaseException as e:
        reason = "".join(traceback.format_exception_only(type(e), e)).strip()[-2000:]
    sys.stdout.flush()
    print("\n" + json.dumps({"nonce": nonce, "verdict": verdict, "reason": reason}), flush=True)


def _read_config(fd: int) -> dict:
    with os.fdopen(fd, "rb") as f:
        return json.loads(f.read())


def _fail_setup(error: BaseException) -> None:
    print(f"reasonrl-jail: setup failed: {type(error).__name__}: {error}", file=sys.stderr)
    os._exit(SETUP_FAILED)


def run_init(worker: int, cfg: dict) -> None:
    """PID 1 while the worker runs: hold none of the program's streams, reap orphans, and once
    the worker has ended report its exit status (negative: the signal that killed it)."""
    for fd in (0, 1, cfg["stderr_fd"], *cfg["fds"]):
        os.close(fd)
    while True:
        pid, status = os.wait()
        if pid == worker:
            break
    os.write(cfg["control_fd"], b"X%d" % os.waitstatus_to_exitcode(status))
    os._exit(0)  # the kernel now kills whatever is left in the namespace


def run_worker(cfg: dict) -> None:
    """Drop privileges, say ready, take the program's stderr, and play the role."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")  # a memory cgroup at its limit kills the program's processes first
        drop_privileges(cfg)
    except BaseException as e:
        _fail_setup(e)
    os.write(cfg["control_fd"], b"R")
    os.close(cfg["control_fd"])
    os.dup2(cfg["stderr_fd"], 2)
    os.close(cfg["stderr_fd"])
    os.environ.clear()  # PATH only served to find the interpreter
    role, fds = cfg["role"], cfg["fds"]
    if role == "exec":
        import runpy
        import site

        site.setquit()  # exit() and quit(), which -S leaves out
        for path in cfg["site_dirs"]:  # empty unless a trusted request asked for packages
            site.addsitedir(path)
        sys.argv = ["main.py"]
        sys.path.insert(0, "/sandbox")
        runpy.run_path("main.py", run_name="__main__")
    elif role == "runner":
        serve_calls(fds[0], fds[1])
    else:
        run_harness(fds[0], fds[1])


def main() -> None:
    cfg = _read_config(int(sys.argv[2]))
    try:
        join_cgroup(cfg)
        build_root(cfg)
        worker = os.fork()
    except BaseException as e:
        _fail_setup(e)
    if worker == 0:
        run_worker(cfg)
    else:
        run_init(worker, cfg)


if __name__ == "__main__":
    main()
