"""The fast engine against its oracles: the hf engine (greedy, token for token), a
teacher-forced forward (log-probs), transformers' top-k/top-p warpers (allowed tokens)."""

import copy
import math

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from reasonrl.config import ModelConfig, load_config
from reasonrl.logging import read_jsonl
from reasonrl.models import load_model, load_tokenizer
from reasonrl.models.forward import completion_logprobs
from reasonrl.rollout import ENGINES, FastEngine, HFEngine
from reasonrl.rollout.fast import sample_tokens
from reasonrl.tasks import Sample, render_prompt
from reasonrl.train.run import run


@pytest.fixture(scope="module")
def bundled():
    tok = load_tokenizer("bundled")
    model = load_model(ModelConfig(path="bundled", device="cpu"))
    return model, tok


def _prompts(tok):
    """Groups of repeated prompts (as the trainer passes them) of different lengths; A comes
    back later, not consecutively, so it is a new group there."""
    q = "State the final answer to the following arithmetic problem: "
    a, b, c = (
        render_prompt(Sample(q + text, "0"), tok)
        for text in ("12 + 34 - 5 =", "7 + 8 =", "61 - 9 + 40 - 3 =")
    )
    return [a] * 4 + [b] + [c] * 3 + [a] * 2


def _draws(logits, n, **kw):
    torch.manual_seed(0)
    ids, logp = sample_tokens(logits.expand(n, -1), **kw)
    return ids, logp


PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize(
    ("top_p", "top_k", "expected"),
    [
        (1.0, 0, [0.5, 0.3, 0.15, 0.05]),
        (0.75, 0, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),  # 0.5 + 0.3 is the smallest prefix ≥ 0.75
        (1.0, 3, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),
        # top-p runs on the top-k tokens renormalised: 0.5/0.95 = 0.526 ≥ 0.52 already
        (0.52, 3, [1, 0, 0, 0]),
        (0.52, 0, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),  # without top-k, 0.5 < 0.52 needs token 1
    ],
)
def test_sampling_draws_only_allowed_tokens_in_proportion(top_p, top_k, expected):
    n = 20_000
    ids, logp = _draws(PROBS.log().unsqueeze(0), n, top_p=top_p, top_k=top_k)
    freq = torch.bincount(ids, minlength=4).float() / n
    allowed = torch.tensor(expected) > 0
    assert (freq[~allowed] == 0).all()
    torch.testing.assert_close(
        freq, torch.tensor(expected, dtype=torch.float32), atol=0.015, rtol=0
    )
    # the log-prob is the unfiltered distribution's
    torch.testing.assert_close(logp, PROBS.log()[ids])


def test_temperature_scales_the_distribution_and_its_logprobs():
    n = 20_000
    ids, logp = _draws(PROBS.log().unsqueeze(0), n, temperature=0.5)
    sharp = PROBS**2 / (PROBS**2).sum()
    freq = torch.bincount(ids, minlength=4).float() / n
    torch.testing.assert_close(freq, sharp, atol=0.015, rtol=0)
    torch.testing.assert_close(logp, sharp.log()[ids])


def test_greedy_takes_the_argmax_scored_at_temperature_one():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, -1.0, 3.5]])
    ids, logp = sample_tokens(logits, temperature=0.3, top_p=0.5, greedy=True)
    assert ids.tolist() == [1, 2]
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[[0, 1], [1, 2]])


@pytest.mark.parametrize(("top_p", "top_k"), [(0.9, 0), (1.0, 7), (0.6, 12)])
def test_sampling_stays_inside_transformers_warpers(top_p, top_k):
    torch.manual_seed(1)
    logits = torch.randn(16, 50) * 2
    warped = logits / 0.8
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    warped = TopPLogitsWarper(top_p)(None, warped)
    allowed = torch.isfinite(warped)
    for _ in range(50):
        ids, _ = sample_tokens(logits, temperature=0.8, top_p=top_p, top_k=top_k)
        assert allowed[torch.arange(16), ids].all()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_greedy_equals_hf_token_for_token(bundled, attn):
    model, tok = bundled
    if attn != model.config._attn_implementation:
        model = copy.deepcopy(model)
        model.set_attn_implementation(attn)
    prompts = _prompts(tok)
    ref = HFEngine(model, tok).generate(prompts, max_new_tokens=40, greedy=True)
    for engine in (FastEngine(model, tok), FastEngine(model, tok, batch_completions=3)):
        ro = engine.generate(prompts, max_new_tokens=40, greedy=True)
        assert torch.equal(ro.prompt_ids, ref.prompt_ids)
        assert torch.equal(ro.prompt_mask, ref.prompt_mask)
        assert torch.equal(ro.completion_ids, ref.completion_ids)
        assert torch.equal(ro.completion_mask, ref.completion_mask)
        assert ro.texts == ref.texts and torch.equal(ro.finished, ref.finished)
        torch.testing.assert_close(ro.logprobs, ref.logprobs, atol=1e-4, rtol=0)
    assert len(set(ref.prompt_mask.sum(-1).tolist())) == 3  # the prompts really differ in length


def test_padded_shapes_and_late_stop_checks_change_nothing(bundled):
    # What the CUDA path does (rows and cache length rounded up to buckets, "all finished?"
    # checked every few steps), run eagerly on the CPU.
    model, tok = bundled
    prompts = _prompts(tok)
    plain = FastEngine(model, tok).generate(prompts, max_new_tokens=40, greedy=True)
    engine = FastEngine(model, tok, pad_shapes=True, sync_every=5)
    padded = engine.generate(prompts, max_new_tokens=40, greedy=True)
    assert torch.equal(padded.completion_ids, plain.completion_ids)
    torch.testing.assert_close(padded.logprobs, plain.logprobs, atol=1e-4, rtol=0)
    assert [k for k in engine._decoders] == [(16, 128)]  # 10 rows → 16; 40 + P → 128


@pytest.mark.parametrize("greedy", [True, False])
def test_the_decode_step_traces_whole_with_no_host_sync(bundled, greedy):
    # A CUDA graph replays device work only: a host sync (.item(), bool(tensor)), a
    # data-dependent shape or a Python branch on a tensor's value inside the step would be
    # baked in or break capture. Dynamo refuses the same constructs under fullgraph=True, so
    # tracing the step here checks on the CPU what capture needs; the traced step must also
    # decode exactly what the plain one does.
    model, tok = bundled
    prompts = _prompts(tok)
    settings = {"greedy": True} if greedy else {"temperature": 0.8, "top_p": 0.9, "top_k": 20}

    def decode(engine):
        torch.manual_seed(0)
        return engine.generate(prompts, max_new_tokens=24, **settings)

    plain = decode(FastEngine(model, tok, pad_shapes=True, sync_every=4))
    engine = FastEngine(model, tok, pad_shapes=True, sync_every=4)
    torch._dynamo.reset()
    engine._step = torch.compile(engine._step, fullgraph=True, backend="eager")
    traced = decode(engine)  # raises torch._dynamo.exc.Unsupported at any graph break
    torch._dynamo.reset()
    assert torch.equal(traced.completion_ids, plain.completion_ids)
    torch.testing.assert_close(traced.logprobs, plain.logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k"), [(0.7, 0.9, 0), (1.0, 1.0, 0), (1.2, 1.0, 5)]
)
def test_sampled_logprobs_match_a_teacher_forced_forward(bundled, temperature, top_p, top_k):
    model, tok = bundled
    torch.manual_seed(0)
    ro = FastEngine(model, tok).generate(
        _prompts(tok), max_new_tokens=32, temperature=temperature, top_p=top_p, top_k=top_k
    )
    c = ro.completion_ids.shape[1]
    with torch.no_grad():
        logp, _ = completion_logprobs(model, ro.input_ids, ro.attention_mask, c, temperature)
    m = ro.completion_mask.bool()
    torch.testing.assert_close(ro.logprobs[m], logp[m], atol=1e-4, rtol=0)
    assert (ro.logprobs[~m] == 0).all()
    # a group's rows are sampled independently
    assert len(set(ro.texts[:4])) > 1


@pytest.mark.parametrize("max_new_tokens", [12, 48])
def test_eos_stops_each_row_and_masks_what_follows(bundled, max_new_tokens):
    model, tok = bundled
    torch.manual_seed(0)
    ro = FastEngine(model, tok).generate(_prompts(tok), max_new_tokens=max_new_tokens)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    c = ro.completion_ids.shape[1]
    assert c <= max_new_tokens
    for ids, mask, done, text in zip(
        ro.completion_ids, ro.completion_mask, ro.finished, ro.texts, strict=True
    ):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()
        assert eos not in ids[: n - 1].tolist()
        assert bool(done) == (ids[n - 1] == eos)
        assert done or n == max_new_tokens
        assert (ids[n:] == pad).all()
        assert text == tok.decode(ids[:n], skip_special_tokens=True)
    if max_new_tokens == 12:
        assert not ro.finished.all()  # cut rows: no EOS, mask to the end
    else:
        assert ro.finished.all() and c == int(ro.lengths.max())  # stopped once all were done


def test_each_group_is_prefilled_once(bundled):
    model, tok = bundled
    rows = []

    def count_prefill_rows(_module, args, kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:
            rows.append(ids.shape[0])

    handle = model.register_forward_pre_hook(count_prefill_rows, with_kwargs=True)
    try:
        engine = FastEngine(model, tok)
        ro = engine.generate(_prompts(tok), max_new_tokens=8, temperature=1.0)
    finally:
        handle.remove()
    # a×4, b, c×3, a×2: four groups, ten rows
    assert rows == [4] and engine.stats.prefill_rows == 4 and len(ro) == 10
    assert engine.stats.decode_steps == ro.completion_ids.shape[1] - 1


def test_generates_with_the_live_weights(bundled):
    model, tok = bundled
    model = copy.deepcopy(model)
    engine = FastEngine(model, tok)
    prompts = _prompts(tok)
    before = engine.generate(prompts, max_new_tokens=24, greedy=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # in place, as an optimizer step is
    after = engine.generate(prompts, max_new_tokens=24, greedy=True)
    ref = HFEngine(model, tok).generate(prompts, max_new_tokens=24, greedy=True)
    assert after.texts != before.texts
    assert torch.equal(after.completion_ids, ref.completion_ids)


def test_rejects_attention_it_cannot_mask(tiny_qwen):
    tiny_qwen.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="sdpa or eager"):
        FastEngine(tiny_qwen, load_tokenizer("bundled"))


def test_a_tiny_rl_run_trains_with_the_fast_engine(tmp_path, monkeypatch):
    calls = []

    class Recorded(FastEngine):  # the real engine, recording that the run went through it
        def generate(self, prompts, **kw):
            calls.append((len(prompts), kw.get("greedy", False)))
            return super().generate(prompts, **kw)

    monkeypatch.setitem(ENGINES, "fast", Recorded)
    overrides = [
        "rollout.engine=fast",
        "task.train_size=64",
        "task.eval_size=4",
        "rl.steps=3",
        "rl.prompts_per_step=2",
        "rl.completions_per_prompt=4",
        "rl.micro_batch_completions=4",
        "rl.learning_rate=1e-3",
        "rl.warmup_steps=0",
        "rollout.max_new_tokens=24",
        "eval.sampling.max_new_tokens=24",
        "eval.k=2",
        "log.checkpoint_every=0",
        "log.tensorboard=false",
    ]
    run_dir = tmp_path / "run"
    summary = run(load_config("quickstart", overrides), run_dir)

    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "reward/mean" in m]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(math.isfinite(m["loss/total"]) for m in metrics)
    assert any(m["optim/grad_norm"] > 0 for m in metrics)
    assert summary["before"]["n"] == summary["after"]["n"] == 4
    # eval before (greedy, sampled), three steps of 2 × 4 rollouts, eval after
    assert calls == [(4, True), (8, False)] + [(8, False)] * 3 + [(4, True), (8, False)]
    trained = load_model(ModelConfig(path=str(run_dir / "model"), device="cpu"))
    start = load_model(ModelConfig(path="bundled", device="cpu"))
    assert any(
        not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters(), strict=True)
    )
