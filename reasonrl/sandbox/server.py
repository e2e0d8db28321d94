"""The sandbox over HTTP: FastAPI on uvicorn. ``reasonrl sandbox serve`` starts it.

Endpoints: ``POST /run_code`` (SandboxFusion's shape), ``POST /evaluate`` (tests → verdict),
``GET /health``. At most ``workers`` runs at once; up to ``queue`` more wait, beyond that the
answer is 429 (the client retries). With a token, every request but ``/health`` needs
``Authorization: Bearer <token>``; a token is required to listen on a non-loopback address.

Isolation and what it leaves out: see :mod:`reasonrl.sandbox`.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Request

from reasonrl.sandbox.runner import Sandbox
from reasonrl.sandbox.schema import (
    EvaluateRequest,
    EvaluateResponse,
    RunCodeRequest,
    RunCodeResponse,
)

T = TypeVar("T")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or "localhost") is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(sandbox: Sandbox, workers: int, queue: int, token: str | None) -> FastAPI:
    """The app: ``workers`` concurrent runs, ``queue`` waiting ones, optional bearer token."""
    app = FastAPI(title="reasonrl sandbox")
    limiter = anyio.CapacityLimiter(workers)
    pending = 0  # requests admitted and not yet answered: running + queued

    def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token")

    async def admit(fn: Callable[[Any], T], req: Any) -> T:
        nonlocal pending
        if pending >= workers + queue:
            raise HTTPException(429, "the sandbox queue is full; retry later")
        pending += 1
        try:
            return await anyio.to_thread.run_sync(fn, req, limiter=limiter)
        finally:
            pending -= 1

    @app.post("/run_code", dependencies=[Depends(authorize)])
    async def run_code(req: RunCodeRequest) -> RunCodeResponse:
        return await admit(sandbox.run_code, req)

    @app.post("/evaluate", dependencies=[Depends(authorize)])
    async def evaluate(req: EvaluateRequest) -> EvaluateResponse:
        return await admit(sandbox.evaluate, req)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        running = int(limiter.borrowed_tokens)
        return {"status": "ok", "workers": workers, "running": running, "queued": pending - running}

    return app
