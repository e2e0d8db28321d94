"""The code-execution sandbox: run untrusted Python and judge it by what only we can produce.

``reasonrl sandbox serve`` exposes it over HTTP (:mod:`reasonrl.sandbox.server`);
:class:`SandboxClient` talks to it; :class:`Sandbox` runs the same jails in-process.

What every run gets (:mod:`reasonrl.sandbox.jail` builds it, the server must start as root):

- its own PID, network, mount, IPC and UTS namespaces (util-linux ``unshare``), and its own
  process group; PID 1 of the namespace is a tiny init whose command line names no host path
  (no staging directory, no prefix) and whose environment the program cannot read; the program
  is its child, and when the program ends or is killed every process it started (a fork bomb,
  a background daemon) dies with the namespace;
- no network at all: only a loopback device that is down (the server itself is unreachable);
- an empty environment (nothing of the server's), a random unprivileged uid and no groups,
  ``no_new_privs``, nosuid mounts, and a chroot (inside which the kernel refuses to create
  user namespaces, so the mounts cannot be undone);
- a new root on a size-capped tmpfs: read-only ``/usr``, ``/lib*`` and the Python standard
  library, every site-packages and dist-packages directory hidden (the base interpreter's,
  the system's, any bundled interpreter's under ``/usr``), a private ``/proc``, a ``/dev``
  with null, zero, random and urandom only, a writable ``/tmp`` and working directory
  ``/sandbox`` that vanish with the namespace; the host's files (``/home``, ``/root``,
  ``/work``, the data sets in site-packages, the tests) are not in it. A ``/run_code``
  request of reasonrl's own with ``packages: true`` gets the server's own site directories
  instead (its virtualenv's, its conda environment's, ``pip install --user``'s), read-only and
  on ``sys.path``: for trusted programs such as the reasoning-gym scorer, never for candidate
  code;
- rlimits on address space, CPU seconds, processes (threads included), file size, open files,
  core dumps (0); a request's ``memory_limit_MB`` is capped to the server's memory per
  request (``--request-memory-mb``, 4096 by default);
- a bound on the memory of a request as a whole, all its processes and jails together: a
  memory cgroup limited to ``--request-memory-mb`` where the host lets the server make one
  (cgroup v1 or v2; the program's processes are the out-of-memory killer's first victims),
  else fewer processes per jail so that processes x address space stays within it.
  ``sandbox serve`` prints which one applies;
- stdout and stderr read with a byte cap (the jail is killed on excess) and a wall-clock
  deadline after which PID 1 of the namespace is killed, which takes every process with it;
  the jail's own diagnostics (``unshare``'s, a failed setup's) go to a separate stream and
  never into the program's stderr.

``/run_code`` answers as SandboxFusion's server does, so that its unchanged client accepts
every result: a program past its deadline (or CPU limit) is ``TimeLimitExceeded`` with no
return code; any other is ``Finished`` with its exit status, negative for the signal that
killed it (``-9`` when the sandbox killed it for output over the cap, or the memory cgroup
did); ``Success`` only for ``Finished`` with 0, else ``Failed``; ``SandboxError`` only when
the jail could not be built. ``files`` whose names collide (``a`` and ``a/b``), contain NUL,
are too long or leave the working directory are refused with a 422 that says why.

How a verdict is reached (``/evaluate``):

- ``asserts``: the tests run in a second jail (the harness) with its own uid and namespaces;
  the candidate's functions are called across a pipe with plain data only (builtin types,
  rebuilt from ``marshal`` and checked to be of exact builtin types, so an ``__eq__`` that is
  always true cannot come back; a solution's function named like a builtin, ``abs`` say, is
  not passed to the tests, so it cannot shadow the one they use). The harness writes a
  per-request nonce with its verdict after the tests finish; the server accepts "passed" only
  from that line and a zero exit status of the harness. The candidate can print anything,
  exit early, or patch its own interpreter: none of it reaches the verdict.
- ``io``: the server compares stdout with the expected output; the expected output never
  enters a jail.
- a jail that could not be built says so through a pipe before any candidate code runs;
  ``error`` (a reward of None) comes only from that or from the server, never from the
  candidate; a candidate that runs out of time gets ``timeout``, which rewards count as wrong.

Not covered:

- CPU time of the jail as a whole is bounded only per process times the process cap (no CPU
  cgroup); a fork bomb holds the CPUs until the deadline, slowing other runs;
- the program's own process can find the interpreter's prefix (``sys.executable``, its
  mounts) and, in its memory, the jail's configuration: nothing in them is secret or reachable;
- the kernel is shared and system calls are not filtered (no seccomp): a kernel exploit
  escapes any namespace (use a VM for hostile users);
- tests in ``asserts`` mode that reference helpers defined by the solution (HumanEval's
  ``poly``) call the solution's versions of them (the ``code`` reward defines the prompt's
  helpers again after the candidate's code, so these are the prompt's); values that are not
  plain data (objects, callbacks, generators) cannot cross, and in-place changes to arguments
  are not seen;
- only Python; no packages beyond the standard library inside the jail for candidate code.
"""

import os

from reasonrl.config import ConfigError
from reasonrl.sandbox.client import SandboxClient, SandboxUnavailable
from reasonrl.sandbox.runner import Limits, Sandbox, isolation_problem
from reasonrl.sandbox.schema import (
    AssertTests,
    EvaluateRequest,
    EvaluateResponse,
    IOCase,
    IOTests,
    RunCodeRequest,
    RunCodeResponse,
)


def sandbox_executor(url: str | None, token: str | None, user: str) -> Sandbox | SandboxClient:
    """Where ``user`` (a reward, a tool) runs its programs: the sandbox server at ``url``
    (token from ``token`` or ``REASONRL_SANDBOX_TOKEN``), else jails in this process;
    ConfigError when there is no url and this machine cannot build jails."""
    if url:
        return SandboxClient(url, token or os.environ.get("REASONRL_SANDBOX_TOKEN"))
    problem = isolation_problem()
    if problem is not None:
        raise ConfigError(f"the {user} has no sandbox url and cannot run jails here: {problem}")
    return Sandbox()


__all__ = [
    "AssertTests",
    "EvaluateRequest",
    "EvaluateResponse",
    "IOCase",
    "IOTests",
    "Limits",
    "RunCodeRequest",
    "RunCodeResponse",
    "Sandbox",
    "SandboxClient",
    "SandboxUnavailable",
    "isolation_problem",
    "sandbox_executor",
]
