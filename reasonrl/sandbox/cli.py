"""``reasonrl sandbox serve [--host 127.0.0.1] [--port 8080] [--workers N] [--token T]
[--request-memory-mb 4096]``.

Starts the code-execution server (as root: it builds namespaces, then drops each run to a
random unprivileged uid). Check it with ``curl localhost:8080/health``. Runs on any Linux
machine with util-linux ``unshare``; no GPU. Left out: TLS (put a proxy in front), languages
other than Python.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

sandbox_app = typer.Typer(
    help="The code-execution sandbox server.", no_args_is_help=True, add_completion=False
)


# A callback keeps ``serve`` a subcommand even while it is the only one (Typer would otherwise
# collapse a one-command app into that command), so ``sandbox_app`` behaves the same whether it
# is mounted with ``app.add_typer(sandbox_app, name="sandbox")`` or invoked directly.
@sandbox_app.callback()
def _group() -> None:
    """The code-execution sandbox (SandboxFusion-compatible /run_code, plus /evaluate)."""


@sandbox_app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Runs at once (0: the number of CPUs, at most as many as the machine's memory "
            "holds at --request-memory-mb each).",
        ),
    ] = 0,
    queue: Annotated[int, typer.Option(min=0, help="Requests that may wait; then 429.")] = 256,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="REASONRL_SANDBOX_TOKEN",
            help="Bearer token required on every request but /health (needed off loopback).",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Default wall-clock seconds per run.")] = 10.0,
    memory_mb: Annotated[
        int, typer.Option(min=1, help="Default address space per process (MB).")
    ] = 1024,
    request_memory_mb: Annotated[
        int,
        typer.Option(
            min=1,
            help="Memory of one request, all its processes together (MB): a memory cgroup where "
            "the host allows one, else fewer processes per run. Caps a request's memory_limit_MB.",
        ),
    ] = 4096,
) -> None:
    """Serve POST /run_code, POST /evaluate and GET /health."""
    import uvicorn

    from reasonrl.sandbox.runner import Limits, Sandbox, isolation_problem
    from reasonrl.sandbox.server import create_app, is_loopback

    if not token and not is_loopback(host):
        typer.echo(
            f"error: listening on {host} needs --token (or REASONRL_SANDBOX_TOKEN)", err=True
        )
        raise typer.Exit(2)
    problem = isolation_problem()
    if problem is not None:
        typer.echo(f"error: cannot isolate runs on this machine: {problem}", err=True)
        raise typer.Exit(2)
    ram_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    fit = max(1, ram_mb // request_memory_mb)  # requests whose bounds the memory can honour
    if workers > fit:
        typer.echo(
            f"warning: {workers} workers x {request_memory_mb} MB per request is more than this "
            f"machine's {ram_mb} MB of memory; {fit} would fit",
            err=True,
        )
    workers = workers or min(os.cpu_count() or 1, fit)
    limits = Limits(
        timeout_s=timeout,
        memory_mb=min(memory_mb, request_memory_mb),
        request_memory_mb=request_memory_mb,
    )
    sandbox = Sandbox(limits)
    typer.echo(f"sandbox on http://{host}:{port} with {workers} workers, queue {queue}")
    typer.echo(f"memory: {sandbox.memory_bound()}")
    uvicorn.run(
        create_app(sandbox, workers, queue, token), host=host, port=port, log_level="warning"
    )
