"""HTTP client of the sandbox server, with retries; the same two methods as the in-process
:class:`reasonrl.sandbox.Sandbox`, so a verifier can use either."""

from __future__ import annotations

import time
from typing import Any

import httpx
from pydantic import BaseModel

from reasonrl.sandbox.schema import (
    EvaluateRequest,
    EvaluateResponse,
    RunCodeRequest,
    RunCodeResponse,
)

_RETRY_STATUS = {429, 500, 502, 503, 504}


class SandboxUnavailable(RuntimeError):
    """The server could not be reached, refused the request, or kept failing after retries."""


class SandboxClient:
    """Talks to ``reasonrl sandbox serve`` at ``url``. Thread-safe.

    A request is retried ``retries`` times (exponential backoff from ``backoff_s``) on
    connection errors, 429 (queue full) and 5xx; anything else raises at once.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout_s: float = 300.0,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout_s)
        self.retries, self.backoff_s = retries, backoff_s

    def _request(self, method: str, path: str, body: BaseModel | None = None) -> dict[str, Any]:
        payload = None if body is None else body.model_dump(mode="json", exclude_none=True)
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._http.request(method, path, json=payload)
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}"
                continue
            if response.status_code in _RETRY_STATUS:
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code != 200:
                raise SandboxUnavailable(f"HTTP {response.status_code}: {response.text[:500]}")
            return response.json()
        raise SandboxUnavailable(f"{path} failed after {self.retries + 1} attempts: {problem}")

    def run_code(self, req: RunCodeRequest) -> RunCodeResponse:
        """POST /run_code."""
        return RunCodeResponse.model_validate(self._request("POST", "/run_code", req))

    def evaluate(self, req: EvaluateRequest) -> EvaluateResponse:
        """POST /evaluate."""
        return EvaluateResponse.model_validate(self._request("POST", "/evaluate", req))

    def health(self) -> dict[str, Any]:
        """GET /health: ``{"status": "ok", "workers", "running", "queued"}``."""
        return self._request("GET", "/health")

    def close(self) -> None:
        self._http.close()
