import pytest
import torch

from reasonrl.config import ModelConfig
from reasonrl.models import load_model, load_tokenizer
from reasonrl.models.forward import completion_logprobs
from reasonrl.rollout import HFEngine
from reasonrl.rollout.hf import completion_mask
from reasonrl.tasks import Sample, render_prompt


@pytest.fixture(scope="module")
def bundled():
    tok = load_tokenizer("bundled")
    model = load_model(ModelConfig(path="bundled", device="cpu"))
    return model, tok


def _prompts(tok, n):
    questions = [
        f"State the final answer to the following arithmetic problem: {i} + {i % 7} ="
        for i in range(n)
    ]
    # Different lengths so that left padding is exercised.
    questions[0] = "State the final answer to the following arithmetic problem: 12 + 34 - 5 ="
    return [render_prompt(Sample(q, "0"), tok) for q in questions]


def test_completion_mask_by_hand():
    ids = torch.tensor([[5, 6, 2, 0, 0], [2, 0, 0, 0, 0], [5, 5, 5, 5, 5], [5, 9, 5, 2, 9]])
    expected = [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert completion_mask(ids, [2]).tolist() == expected
    assert completion_mask(ids, [9, 2])[3].tolist() == [1, 1, 0, 0, 0]


@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_match_a_teacher_forced_forward(bundled, temperature, seeded):
    model, tok = bundled
    engine = HFEngine(model, tok, batch_completions=64)
    torch.manual_seed(0)
    seeds = list(range(12)) if seeded else None
    ro = engine.generate(_prompts(tok, 12), max_new_tokens=24, temperature=temperature, seeds=seeds)
    b, c = ro.completion_ids.shape
    assert ro.prompt_ids.shape == ro.prompt_mask.shape and ro.logprobs.shape == (b, c)
    # left padding: masks are 0 then 1, and padded positions hold the pad id
    assert (ro.prompt_mask[:, 0] == 0).any() and (ro.prompt_mask[:, -1] == 1).all()
    assert (ro.prompt_ids[ro.prompt_mask == 0] == tok.pad_token_id).all()
    # completion mask: ends at the first EOS; nothing after it counts
    eos = tok.eos_token_id
    for row, mask in zip(ro.completion_ids, ro.completion_mask, strict=True):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()
        assert eos not in row[: n - 1].tolist()
        assert row[n - 1] == eos or n == c
    assert (ro.completion_ids[:, -1] == eos).any() or (ro.lengths < c).any()
    with torch.no_grad():
        logp, _ = completion_logprobs(model, ro.input_ids, ro.attention_mask, c, temperature)
    m = ro.completion_mask.bool()
    torch.testing.assert_close(ro.logprobs[m], logp[m], atol=1e-4, rtol=0)
    assert (ro.logprobs[~m] == 0).all()


def test_texts_are_the_decoded_masked_completions(bundled):
    model, tok = bundled
    ro = HFEngine(model, tok).generate(_prompts(tok, 4), max_new_tokens=24, greedy=True)
    for text, ids, mask in zip(ro.texts, ro.completion_ids, ro.completion_mask, strict=True):
        assert text == tok.decode(ids[mask.bool()], skip_special_tokens=True)


def test_chunked_generation_equals_one_batch_greedily(bundled):
    model, tok = bundled
    prompts = _prompts(tok, 6)
    one = HFEngine(model, tok, batch_completions=64).generate(
        prompts, max_new_tokens=20, greedy=True
    )
    chunked = HFEngine(model, tok, batch_completions=4).generate(
        prompts, max_new_tokens=20, greedy=True
    )
    assert one.texts == chunked.texts
    assert chunked.completion_ids.shape[0] == 6
