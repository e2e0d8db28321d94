"""The fast engine on CUDA with its decode step captured in CUDA graphs, against the same oracles
as on the CPU (tests/rollout/test_fast.py): the hf engine greedily, token for token, and a
teacher-forced forward for the sampled tokens' log-probs. Skipped without CUDA."""

import copy

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from reasonrl.config import ModelConfig
from reasonrl.models import load_model, load_tokenizer
from reasonrl.models.forward import completion_logprobs
from reasonrl.rollout import FastEngine, HFEngine
from reasonrl.tasks import Sample, render_prompt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def bundled():
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the 1e-4 comparisons
    tok = load_tokenizer("bundled")
    model = load_model(ModelConfig(path="bundled", device="cuda"))
    return model, tok


def _prompts(tok, repeat=(4, 1, 3, 2)):
    q = "State the final answer to the following arithmetic problem: "
    texts = ("12 + 34 - 5 =", "7 + 8 =", "61 - 9 + 40 - 3 =", "12 + 34 - 5 =")
    rendered = [render_prompt(Sample(q + t, "0"), tok) for t in texts]
    return [p for p, n in zip(rendered, repeat, strict=True) for _ in range(n)]


def test_graphed_greedy_equals_hf_token_for_token(bundled):
    model, tok = bundled
    engine = FastEngine(model, tok)
    assert engine.cuda_graphs and engine.pad_shapes
    for repeat in ((4, 1, 3, 2), (1, 1, 1, 0), (16, 8, 4, 12)):  # 10, 3 and 40 rows: 3 buckets
        prompts = _prompts(tok, repeat)
        ref = HFEngine(model, tok).generate(prompts, max_new_tokens=48, greedy=True)
        ro = engine.generate(prompts, max_new_tokens=48, greedy=True)
        assert torch.equal(ro.prompt_ids, ref.prompt_ids)
        assert torch.equal(ro.completion_ids, ref.completion_ids)
        assert torch.equal(ro.completion_mask, ref.completion_mask)
        assert ro.texts == ref.texts and torch.equal(ro.finished, ref.finished)
        torch.testing.assert_close(ro.logprobs, ref.logprobs, atol=1e-4, rtol=0)
    captures = engine.stats.graph_captures
    assert captures == 3
    # the last shape is still cached (two are kept; the 10-row one was dropped for the 40-row)
    prompts = _prompts(tok, (16, 8, 4, 12))
    again = engine.generate(prompts, max_new_tokens=48, greedy=True)
    assert engine.stats.graph_captures == captures  # replayed, not captured again
    assert (
        again.texts == HFEngine(model, tok).generate(prompts, max_new_tokens=48, greedy=True).texts
    )


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), [(0.7, 0.9, 0), (1.0, 1.0, 20)])
def test_graphed_sampling_logprobs_match_a_teacher_forced_forward(
    bundled, temperature, top_p, top_k
):
    model, tok = bundled
    engine = FastEngine(model, tok)
    torch.manual_seed(0)
    for _ in range(2):  # the second call replays the graph captured by the first
        ro = engine.generate(
            _prompts(tok), max_new_tokens=40, temperature=temperature, top_p=top_p, top_k=top_k
        )
        c = ro.completion_ids.shape[1]
        with torch.no_grad():
            logp, _ = completion_logprobs(model, ro.input_ids, ro.attention_mask, c, temperature)
        m = ro.completion_mask.bool()
        torch.testing.assert_close(ro.logprobs[m], logp[m], atol=1e-4, rtol=0)
        assert (ro.logprobs[~m] == 0).all()
        assert len(set(ro.texts[:4])) > 1  # a group's rows sample independently
    assert engine.stats.graph_captures == 1


def test_graphs_read_the_live_weights(bundled):
    model, tok = bundled
    model = copy.deepcopy(model)
    engine = FastEngine(model, tok)
    prompts = _prompts(tok)
    before = engine.generate(prompts, max_new_tokens=32, greedy=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # in place, as the optimizer does
    after = engine.generate(prompts, max_new_tokens=32, greedy=True)
    ref = HFEngine(model, tok).generate(prompts, max_new_tokens=32, greedy=True)
    assert after.texts != before.texts
    assert torch.equal(after.completion_ids, ref.completion_ids)
    assert engine.stats.graph_captures == 1
    # re-allocated parameters invalidate the graphs: captured again, still right
    for p in model.parameters():
        p.data = p.data.clone()
    moved = engine.generate(prompts, max_new_tokens=32, greedy=True)
    assert engine.stats.graph_captures == 2
    assert torch.equal(moved.completion_ids, ref.completion_ids)


def test_bf16_rollouts_with_graphs_score_like_a_teacher_forced_forward():
    tok = load_tokenizer("bundled")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(config).to("cuda", torch.bfloat16)
    prompts = _prompts(tok, (32, 32, 32, 32))
    ro = FastEngine(model, tok).generate(prompts, max_new_tokens=64, temperature=1.0)
    assert ro.completion_ids.shape[0] == 128
    c = ro.completion_ids.shape[1]
    with torch.no_grad():
        logp, _ = completion_logprobs(model, ro.input_ids, ro.attention_mask, c, 1.0)
    m = ro.completion_mask.bool()
    assert (ro.logprobs[m] - logp[m]).abs().mean() < 0.05  # bf16 rounding, not a mismatch
