"""``rollout.vllm.url``: rollouts from a separate vLLM server (another GPU, another machine),
which gets the policy's weights pushed to it whenever they have changed.

- **Generation** goes through the server's OpenAI-compatible ``/v1/completions``: one request
  per prompt (its own seed), all in flight at once so the server batches them, the prompt as
  token ids and the completion's back as ids (``return_tokens_as_token_ids``) with each one's
  log-prob. Episodes with tools run turn by turn (``episodes.run_turns``), as on ``vllm``.
- **Weights** go through vLLM's weight-transfer API (``/init_weight_transfer_engine``,
  ``/start_weight_update``, ``/update_weights``, ``/finish_weight_update``; the server runs with
  ``VLLM_SERVER_DEV_MODE=1``) over reasonrl's gloo backend (``vllm_receiver``): the trainer
  serves a ``TCPStore`` on the address it reaches the server from, and broadcasts one flat
  buffer per bucket of one dtype. The first generation pushes everything (the server loaded a
  checkpoint of its own), later ones what changed. The prefix cache is cleared after each.

Start the server with what the engine needs (docs/vllm.md)::

    VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --host 127.0.0.1 --port 8000 \\
        --weight-transfer-config '{"backend": "reasonrl_gloo"}' \\
        --logprobs-mode processed_logprobs --enable-prefix-caching
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import httpx
import torch

from reasonrl.config import ConfigError, VLLMConfig
from reasonrl.distributed.groups import buckets, open_group, serve_store
from reasonrl.rollout.vllm_engine import VLLMEngine

BACKEND = "reasonrl_gloo"  # vllm_receiver.BACKEND (that module imports vLLM; this one must not)


class VLLMServerEngine(VLLMEngine):
    """Rollouts from the vLLM server at ``rollout.vllm.url``, following ``model``'s weights."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, settings: VLLMConfig) -> None:
        self._follow(model, tokenizer, settings)
        url = str(settings.url).rstrip("/")
        self.http = httpx.Client(base_url=url, timeout=settings.server_timeout_s)
        try:
            served = self.http.get("/v1/models").raise_for_status().json()["data"]
        except httpx.HTTPError as e:
            raise ConfigError(
                f"rollout.vllm.url: no vLLM server answers at {url} ({e}); start one as "
                "docs/vllm.md says"
            ) from None
        self.served = served[0]["id"]
        # the store listens on the address this machine reaches the server from
        parsed = urlparse(url)
        with socket.create_connection((parsed.hostname, parsed.port or 80)) as probe:
            self.host = probe.getsockname()[0]
        self.store, port = serve_store(self.host)
        init_info = {"host": self.host, "port": port, "prefix": "weights/"}
        self.group = self._while_posting(
            "/init_weight_transfer_engine",
            {"init_info": init_info},
            lambda: open_group(self.store, "weights/", 0, 2, "gloo", self.host),
        )
        self.pool = ThreadPoolExecutor(max_workers=64)

    def _while_posting(self, path: str, body: dict[str, Any], work: Any) -> Any:
        """``work()`` here while ``path`` is posted from another thread (the server's end of
        a collective answers only once the trainer's end has run); its result, once both
        are done. A failed request is a RuntimeError naming it."""
        failed: list[RuntimeError] = []

        def post() -> None:
            try:
                self._post(path, body)
            except RuntimeError as e:
                failed.append(e)

        thread = threading.Thread(target=post, daemon=True)
        thread.start()
        result = work()
        thread.join()
        if failed:
            raise failed[0]
        return result

    def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The server's JSON answer to ``body`` at ``path``; a RuntimeError naming the path if
        the request fails or is refused."""
        try:
            response = self.http.post(path, json=body or {})
        except httpx.HTTPError as e:
            raise RuntimeError(f"vLLM server: {path} failed: {e}") from e
        if response.status_code != 200:
            raise RuntimeError(f"vLLM server: {path} failed: {response.text[:500]}")
        return response.json() if response.content else {}

    def _push(self, weights: dict[str, torch.Tensor]) -> None:
        # a tied tensor is sent under each of its names: on the CPU vLLM keeps a packed copy of
        # the output layer that only a load naming lm_head.weight refreshes (``buckets`` would
        # send shared storage once)
        seen, weights = set(), dict(weights)
        for name, t in weights.items():
            key = (t.untyped_storage().data_ptr(), t.storage_offset())
            if key in seen:
                weights[name] = t.clone()
            seen.add(key)
        layout = buckets(weights)
        info = {
            "buckets": [
                {
                    "dtype": str(b.dtype).removeprefix("torch."),
                    "names": list(b.names),
                    "shapes": [list(s) for s in b.shapes],
                }
                for b in layout
            ]
        }

        def send() -> None:
            for bucket in layout:
                flat = torch.cat([weights[n].detach().reshape(-1).cpu() for n in bucket.names])
                self.group.broadcast(flat, 0).wait()

        self._post("/start_weight_update")
        self._while_posting("/update_weights", {"update_info": info}, send)
        self._post("/finish_weight_update")
        self._post("/reset_prefix_cache")

    def _decode(
        self,
        contexts: list[list[int]],
        room: list[int],
        seeds: Sequence[int] | None,
        stop: str | None,
        *,
        temperature: float,
        top_p: float,
        top_k: int,
        greedy: bool,
    ) -> tuple[list[list[int]], list[list[float]]]:
        def one(i: int) -> tuple[list[int], list[float]]:
            body = {
                "model": self.served,
                "prompt": contexts[i],
                "max_tokens": room[i],
                "temperature": 0.0 if greedy else temperature,
                "top_p": 1.0 if greedy else top_p,
                "top_k": 0 if greedy else top_k,
                "seed": None if seeds is None else int(seeds[i]),
                "stop_token_ids": self.eos_ids,
                "stop": None if stop is None else [stop],
                "include_stop_str_in_output": True,
                "skip_special_tokens": False,
                "logprobs": 0,  # the sampled token's own
                "return_tokens_as_token_ids": True,
            }
            choice = self._post("/v1/completions", body)["choices"][0]["logprobs"]
            tokens = [int(t.removeprefix("token_id:")) for t in choice["tokens"]]
            return tokens, [float(lp) for lp in choice["token_logprobs"]]

        done = list(self.pool.map(one, range(len(contexts))))
        return [t for t, _ in done], [lp for _, lp in done]
