"""The vllm engine on CUDA (tests/rollout/test_vllm_engine.py on the CPU): with
``rollout.vllm.sleep`` the engine gives its GPU memory back between generations and, woken,
generates with the policy's current weights: after each of 3 updates (float32) its greedy
output is ``hf``'s but for near-ties that the GPU's kernels may break otherwise (6 of 8 at
least), and its sampled log-probs are a forward's (mean difference under 1e-3). Skipped
without CUDA, and without vLLM (the GPU image lacks it, and its CUDA wheel is far larger than a
device call carries)."""

from __future__ import annotations

import pytest
import torch

from reasonrl.config import VLLMConfig, load_config
from reasonrl.models import load_model, load_tokenizer
from reasonrl.models.forward import completion_logprobs
from reasonrl.rollout import HFEngine
from reasonrl.tasks import load_splits, render_prompt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytest.importorskip("vllm", reason="vLLM is not installed: pip install 'reasonrl[vllm]'")


def test_a_sleeping_engine_frees_its_memory_and_wakes_with_the_new_weights() -> None:
    from reasonrl.rollout.vllm_engine import VLLMEngine

    cfg = load_config("quickstart", ["model.dtype=float32", "model.device=cuda"])
    tok = load_tokenizer("bundled")
    model = load_model(cfg.model, torch.device("cuda"))
    train, _ = load_splits(cfg.task)
    prompts = [render_prompt(s, tok, cfg.task.prompt, cfg.task.chat_template) for s in train[:8]]
    free_before = torch.cuda.mem_get_info()[0]
    engine = VLLMEngine(model, tok, VLLMConfig(max_model_len=256, sleep=True))
    # asleep: the KV cache (gpu_memory_utilization of the GPU) is not held
    assert torch.cuda.mem_get_info()[0] > free_before - 2 * 2**30
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        got = engine.generate(prompts, max_new_tokens=24, greedy=True)
        assert torch.cuda.mem_get_info()[0] > free_before - 2 * 2**30  # asleep again
        want = HFEngine(model, tok).generate(prompts, max_new_tokens=24, greedy=True)
        assert sum(a == b for a, b in zip(got.texts, want.texts, strict=True)) >= 6
        sampled = engine.generate(prompts, max_new_tokens=24, seeds=range(len(prompts)))
        with torch.no_grad():
            ref, _ = completion_logprobs(
                model, sampled.input_ids, sampled.attention_mask, sampled.completion_ids.shape[1]
            )
        mask = sampled.completion_mask.bool()
        assert (sampled.logprobs[mask] - ref[mask]).abs().mean() < 1e-3
        c = sampled.completion_ids.shape[1]
        logits = model(sampled.input_ids, attention_mask=sampled.attention_mask).logits
        logp = torch.log_softmax(logits[:, -c - 1 : -1].float(), -1)
        logp = logp.gather(-1, sampled.completion_ids.unsqueeze(-1)).squeeze(-1)
        loss = -(logp * sampled.completion_mask).sum() / sampled.completion_mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
