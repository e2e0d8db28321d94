"""The fast engine against its oracles: the hf engine (greedy, token for token) and a
teacher-forced forward (log-probs). Its sampling rule is tested in test_sampling.py."""

import copy
import json
import math

import pytest
import torch

from reasonrl.config import ModelConfig, load_config
from reasonrl.envs import Toolbox, calculator
from reasonrl.logging import read_jsonl
from reasonrl.models import load_model, load_tokenizer
from reasonrl.models.forward import completion_logprobs
from reasonrl.rollout import ENGINES, FastEngine, HFEngine
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


SETTINGS = {
    "greedy": {"greedy": True},
    "sampled": {"temperature": 0.8, "top_p": 0.9, "top_k": 20},
    "seeded": {"temperature": 0.8, "top_p": 0.9, "top_k": 20, "seeds": list(range(10))},
}


@pytest.mark.parametrize("mode", ["greedy", "sampled", "seeded"])
def test_the_decode_step_traces_whole_with_no_host_sync(bundled, mode):
    # A CUDA graph replays device work only: a host sync (.item(), bool(tensor)), a
    # data-dependent shape or a Python branch on a tensor's value inside the step would be
    # baked in or break capture. Dynamo refuses the same constructs under fullgraph=True, so
    # tracing the step here checks on the CPU what capture needs; the traced step must also
    # decode exactly what the plain one does.
    model, tok = bundled
    prompts = _prompts(tok)
    settings = SETTINGS[mode]

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


@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k"), [(0.7, 0.9, 0), (1.0, 1.0, 0), (1.2, 1.0, 5)]
)
def test_sampled_logprobs_match_a_teacher_forced_forward(
    bundled, temperature, top_p, top_k, seeded
):
    model, tok = bundled
    torch.manual_seed(0)
    ro = FastEngine(model, tok).generate(
        _prompts(tok),
        max_new_tokens=32,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seeds=list(range(10)) if seeded else None,
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


def _rows(ro):
    """Each completion's tokens and log-probs, without padding."""
    return [
        (ids[m.bool()].tolist(), lp[m.bool()])
        for ids, m, lp in zip(ro.completion_ids, ro.completion_mask, ro.logprobs, strict=True)
    ]


def _assert_same_rows(got, want):
    for (ids, logp), (ref_ids, ref_logp) in zip(got, want, strict=True):
        assert ids == ref_ids
        torch.testing.assert_close(logp, ref_logp, atol=1e-4, rtol=0)


SEEDED = {"max_new_tokens": 32, "temperature": 0.9, "top_p": 0.95, "top_k": 30}


@pytest.mark.parametrize("engine_type", [HFEngine, FastEngine])
def test_seeded_completions_do_not_depend_on_the_batch(bundled, engine_type):
    # Row i's completion is a function of (seeds[i], prompt, weights): the same whatever the
    # other rows, their order, the chunking, the padding, the global RNG. That is what lets
    # ranks split a step's prompts and still train as one process does.
    model, tok = bundled
    prompts, seeds = _prompts(tok), [1000 + i for i in range(10)]
    torch.manual_seed(0)
    ref = _rows(engine_type(model, tok).generate(prompts, seeds=seeds, **SEEDED))
    assert len({tuple(ids) for ids, _ in ref[:4]}) > 1  # a group's seeds give different draws

    order = [9, 2, 5, 0, 7, 1, 8, 3, 6, 4]
    torch.manual_seed(1)
    shuffled = engine_type(model, tok, batch_completions=3).generate(
        [prompts[i] for i in order], seeds=[seeds[i] for i in order], **SEEDED
    )
    _assert_same_rows(_rows(shuffled), [ref[i] for i in order])

    # beside a longer prompt (more left padding) and another seed, alone in a chunk of one
    longer = render_prompt(Sample("What is 123456 + 654321 - 111111 + 222222 - 3 =", "0"), tok)
    torch.manual_seed(2)
    mixed = engine_type(model, tok).generate([longer, prompts[5]], seeds=[7, seeds[5]], **SEEDED)
    alone = engine_type(model, tok, batch_completions=1).generate(
        [prompts[5]], seeds=[seeds[5]], **SEEDED
    )
    _assert_same_rows(_rows(mixed)[1:], [ref[5]])
    _assert_same_rows(_rows(alone), [ref[5]])

    other = _rows(
        engine_type(model, tok).generate(prompts, seeds=[s + 10 for s in seeds], **SEEDED)
    )
    assert sum(a[0] != b[0] for a, b in zip(other, ref, strict=True)) >= 5


def test_seeded_fast_equals_hf_token_for_token_in_float64(bundled):
    # Both engines draw with the same sample_tokens from the same seeds; given logits that
    # agree to float64 precision (rounded to float32 for sampling), the tokens are the same.
    model, tok = bundled
    model = copy.deepcopy(model).double()
    prompts, seeds = _prompts(tok), list(range(10))
    for settings in (SEEDED, {**SEEDED, "top_p": 1.0, "top_k": 0, "temperature": 1.3}):
        ref = HFEngine(model, tok).generate(prompts, seeds=seeds, **settings)
        ro = FastEngine(model, tok, pad_shapes=True, sync_every=4).generate(
            prompts, seeds=seeds, **settings
        )
        assert torch.equal(ro.completion_ids, ref.completion_ids)
        assert torch.equal(ro.completion_mask, ref.completion_mask)
        torch.testing.assert_close(ro.logprobs, ref.logprobs, atol=1e-6, rtol=0)


def test_greedy_ignores_seeds(bundled):
    model, tok = bundled
    prompts = _prompts(tok)
    for engine in (HFEngine(model, tok), FastEngine(model, tok)):
        plain = engine.generate(prompts, max_new_tokens=24, greedy=True)
        seeded = engine.generate(prompts, max_new_tokens=24, greedy=True, seeds=range(10))
        assert torch.equal(seeded.completion_ids, plain.completion_ids)


@pytest.fixture(scope="module")
def scripted(tool_model, tool_scripts):
    """conftest's tool-calling model, its scripted prompts and three rows of a prompt where it
    calls the calculator or answers by hand."""
    tok = load_tokenizer(str(tool_model))
    model = load_model(ModelConfig(path=str(tool_model), device="cpu"))
    prompts = [render_prompt(Sample(q, "0"), tok) for q in tool_scripts]
    choice = "Add 57 and 68."  # conftest's CHOICE: fit to call the calculator or answer by hand
    return model, tok, prompts + [render_prompt(Sample(choice, "0"), tok)] * 3


def _boxes(n: int, *tools) -> list[Toolbox]:
    return [Toolbox(list(tools) or [calculator]) for _ in range(n)]


def _assert_same_episodes(ro, ref, atol=1e-4):
    assert torch.equal(ro.prompt_ids, ref.prompt_ids)
    assert torch.equal(ro.completion_ids, ref.completion_ids)
    assert torch.equal(ro.completion_mask, ref.completion_mask)
    assert torch.equal(ro.model_mask, ref.model_mask)
    assert ro.texts == ref.texts and torch.equal(ro.finished, ref.finished)
    assert ro.episodes == ref.episodes
    torch.testing.assert_close(ro.logprobs, ref.logprobs, atol=atol, rtol=0)


@pytest.mark.parametrize("batch", [256, 2])
def test_greedy_episodes_equal_hf_and_never_recompute_a_prefix(scripted, tool_scripts, batch):
    model, tok, prompts = scripted
    episode = dict(max_new_tokens=90, greedy=True, max_turns=3)
    ref = HFEngine(model, tok).generate(prompts, toolboxes=_boxes(6), **episode)
    forwards = []

    def record(_module, args, kwargs):
        forwards.append((kwargs["input_ids"].shape[1], kwargs["attention_mask"].dim()))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        engine = FastEngine(model, tok, batch_completions=batch, pad_shapes=batch == 2)
        ro = engine.generate(prompts, toolboxes=_boxes(6), **episode)
    finally:
        handle.remove()
    _assert_same_episodes(ro, ref)
    assert ro.texts[:3] == list(tool_scripts.values())
    assert [e.calls for e in ro.episodes[3:]] == [{"calculator": 1}] * 3
    # One prompt prefill (2-D mask) per chunk, over its prompts' groups only; every later
    # forward feeds at most a drawn token and a whole answer into the cache the rows hold:
    # never a prefix again.
    answers = [len(tok(t, add_special_tokens=False).input_ids) for t in _tool_turns(ro)]
    assert sum(dim == 2 for _, dim in forwards) == -(-6 // batch)
    assert max(width for width, dim in forwards if dim == 4) == 1 + max(answers)
    assert engine.stats.prefill_rows == (4 if batch == 256 else 5)
    assert engine.stats.observation_tokens == sum(answers) > 0


def _tool_turns(ro):
    return [text for e in ro.episodes for role, text in e.turns if role == "tool"]


def test_seeded_episodes_equal_hf_token_for_token_in_float64(scripted):
    # As single turns (test_seeded_fast_equals_hf_token_for_token_in_float64): each turn t of
    # row i draws from derive_seed("turn", seeds[i], t), counting from the turn's start.
    model, tok, prompts = scripted
    model = copy.deepcopy(model).double()
    rows = prompts[:1] * 6 + prompts[3:4] * 6
    episode = dict(max_new_tokens=90, temperature=1.3, max_turns=3, seeds=list(range(12)))
    ref = HFEngine(model, tok).generate(rows, toolboxes=_boxes(12), **episode)
    ro = FastEngine(model, tok, pad_shapes=True).generate(rows, toolboxes=_boxes(12), **episode)
    _assert_same_episodes(ro, ref, atol=1e-6)
    turns = [e.model_turns for e in ro.episodes]
    assert 1 in turns and 2 in turns  # some rows called a tool and went on, some did not
    # the turns after a call are drawn, not fixed: a wrong turn seed would show
    assert len({e.turns[2][1] for e in ro.episodes if len(e.turns) > 2}) >= 3


def test_a_chat_model_s_episodes_in_its_template_s_format_equal_hf(chat_tool_model):
    """The calls and answers come from the toolbox's protocol, as in hf: a turn ends at EOS, a
    Hermes call in it is run and the template's tool message goes into the row's cache. Greedy
    and seeded sampling give hf's episodes, tokens, turns and log-probs."""
    model, tok, use, task = chat_tool_model
    samples = [Sample("What is 12 + 30?", "42")] * 4
    for settings in ({"greedy": True}, {"temperature": 1.0, "seeds": [0, 1, 2, 3]}):
        episode = dict(max_new_tokens=150, max_turns=3, **settings)
        prompts, boxes = use.episodes(samples, tok, task)
        ref = HFEngine(model, tok).generate(prompts, toolboxes=boxes, **episode)
        prompts, boxes = use.episodes(samples, tok, task)
        ro = FastEngine(model, tok).generate(prompts, toolboxes=boxes, **episode)
        _assert_same_episodes(ro, ref)
        called = [i for i, e in enumerate(ro.episodes) if e.calls == {"calculator": 1}]
        assert called == [0, 1, 2, 3] if "greedy" in settings else called
        (i, *_) = called
        assert ro.episodes[i].turns[1] == ("tool", "42")
        # the model's EOS ends its turn and stays in the episode; the tool message follows it
        eos = ro.completion_ids[i].tolist().index(tok.eos_token_id)
        assert ro.model_mask[i, eos] == 1 and ro.model_mask[i, eos + 1] == 0


@pytest.mark.parametrize("temperature", [0.8, 1.3])
def test_episode_logprobs_match_a_teacher_forced_forward_on_model_tokens(scripted, temperature):
    model, tok, prompts = scripted
    ro = FastEngine(model, tok).generate(
        prompts * 2,
        max_new_tokens=90,
        temperature=temperature,
        seeds=list(range(12)),
        toolboxes=_boxes(12),
        max_turns=3,
    )
    assert (ro.model_mask != ro.completion_mask).any()  # environment tokens are there
    c = ro.completion_ids.shape[1]
    with torch.no_grad():
        logp, _ = completion_logprobs(model, ro.input_ids, ro.attention_mask, c, temperature)
    m = ro.model_mask.bool()
    torch.testing.assert_close(ro.logprobs[m], logp[m], atol=1e-4, rtol=0)
    assert (ro.logprobs[~m] == 0).all()
    assert ro.lengths.tolist() == [int(r.sum()) for r in ro.model_mask]


@pytest.mark.parametrize("settings", [{"greedy": True}, {"temperature": 1.5, "seeds": [8]}])
def test_a_row_that_calls_nothing_is_its_single_turn_completion(scripted, settings):
    model, tok, prompts = scripted
    engine = FastEngine(model, tok)
    single = engine.generate(prompts[1:2], max_new_tokens=60, **settings)
    episode = engine.generate(
        prompts[1:2], max_new_tokens=60, toolboxes=_boxes(1), max_turns=3, **settings
    )
    assert episode.episodes[0].calls == {}
    assert torch.equal(episode.completion_ids, single.completion_ids)
    assert torch.equal(episode.model_mask, single.completion_mask)
    torch.testing.assert_close(episode.logprobs, single.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra", [3, 18, 20, 30])
def test_the_budget_counts_model_and_environment_tokens_as_hf_does(scripted, extra):
    # The call is 24 tokens, its answer 18, the answer turn after it 5 (EOS included). extra
    # 3, 18: the answer would leave no room for a model token and is not appended; 20: it is,
    # and the budget cuts the next turn after 2 tokens; 30: the episode finishes inside it.
    model, tok, prompts = scripted
    call = tok("<tool>calculator 12+30</tool>", add_special_tokens=False).input_ids
    answer = tok("<result>42</result>", add_special_tokens=False).input_ids
    assert (len(call), len(answer)) == (24, 18)
    episode = dict(max_new_tokens=len(call) + extra, greedy=True, max_turns=3)
    ref = HFEngine(model, tok).generate(prompts, toolboxes=_boxes(6), **episode)
    ro = FastEngine(model, tok).generate(prompts, toolboxes=_boxes(6), **episode)
    _assert_same_episodes(ro, ref)
    assert (ro.completion_mask.sum(-1) <= len(call) + extra).all()
    assert ro.episodes[0].calls == {"calculator": 1}
    if extra <= 18:
        assert ro.texts[0] == "<tool>calculator 12+30</tool>" and not ro.finished[0]
    else:
        assert ro.episodes[0].turns[1] == ("tool", "<result>42</result>")
        assert int(ro.lengths[0]) == len(call) + min(extra - 18, 5)
        assert bool(ro.finished[0]) == (extra == 30)


def test_a_hostile_tool_answer_ends_as_an_observation_and_the_episode_goes_on(scripted):
    model, tok, prompts = scripted

    def calculator(expression: str) -> str:
        """Answers with runaway output.

        Args:
            expression: ignored.
        """
        return "9" * 100_000

    def boxes(chars: int) -> list[Toolbox]:
        return [Toolbox([calculator], output_chars=chars) for _ in range(6)]

    episode = dict(max_new_tokens=120, greedy=True, max_turns=3)
    # capped at 40 characters: appended, and the model's next turn follows it
    ref = HFEngine(model, tok).generate(prompts, toolboxes=boxes(40), **episode)
    widths = []
    handle = model.register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        ro = FastEngine(model, tok).generate(prompts, toolboxes=boxes(40), **episode)
    finally:
        handle.remove()
    _assert_same_episodes(ro, ref)
    roles, answer = [r for r, _ in ro.episodes[0].turns], ro.episodes[0].turns[1][1]
    assert roles[:3] == ["model", "tool", "model"]
    assert answer == "<result>" + "9" * 40 + "... [99960 more characters]</result>"
    # The abacus error (57 tokens) and this answer (81) left holes past the cache's spare
    # slots (the budget, 120): the rest of the answer was fed a token per step.
    assert len(tok(answer, add_special_tokens=False).input_ids) == 81
    assert 1 < max(widths[1:]) < 1 + 81
    # uncapped: longer than the whole budget, not appended; the episode ends unfinished
    ref = HFEngine(model, tok).generate(prompts, toolboxes=boxes(10**6), **episode)
    ro = FastEngine(model, tok).generate(prompts, toolboxes=boxes(10**6), **episode)
    _assert_same_episodes(ro, ref)
    assert ro.texts[0] == "<tool>calculator 12+30</tool>" and not ro.finished[0]
    assert ro.texts[1] == "<answer>7</answer>" and ro.finished[1]  # its neighbour unaffected


def test_an_rl_run_trains_on_fast_episodes_as_on_hf_episodes(tmp_path, tool_model, monkeypatch):
    # test_episodes_with_tools_train (tests/train/test_algorithms.py) with each engine: the
    # first step's rollouts come from the same weights and seeds, so its episode metrics agree.
    turns = []

    class Recorded(FastEngine):  # the real engine, recording the episodes it generated
        def generate(self, prompts, **kw):
            ro = super().generate(prompts, **kw)
            turns.append(ro.episodes is not None and kw["max_turns"] == 3)
            return ro

    monkeypatch.setitem(ENGINES, "fast", Recorded)
    row = json.dumps({"prompt": "Add 57 and 68.", "answer": "125"}) + "\n"
    (tmp_path / "train.jsonl").write_text(row * 12)
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": "2"}))
    first = {}
    for engine in ("hf", "fast"):
        overrides = [
            f"rollout.engine={engine}",
            f"model.path={tool_model}",
            "task.source=jsonl",
            f"task.train_path={tmp_path / 'train.jsonl'}",
            f"task.eval_path={tmp_path / 'eval.jsonl'}",
            "rl.steps=2",
            "rl.prompts_per_step=3",
            "rl.completions_per_prompt=4",
            "rl.micro_batch_completions=4",
            "rl.learning_rate=1e-4",
            "rollout.max_turns=3",
            "rollout.tools=[calculator]",
            "rollout.max_new_tokens=90",
            "eval.before=false",
            "eval.after=false",
            "log.tensorboard=false",
            "log.checkpoint_every=0",
        ]
        run_dir = tmp_path / engine
        run(load_config(None, overrides), run_dir)
        metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "reward/mean" in m]
        assert [m["step"] for m in metrics] == [1, 2]
        assert all(math.isfinite(m["loss/policy"]) for m in metrics)
        first[engine] = {k: v for k, v in metrics[0].items() if k.split("/")[0] in SAME}
    assert turns == [True, True]  # the fast run's two steps were episodes
    assert first["fast"]["tools/calculator/calls_per_episode"] > 0
    assert first["fast"] == pytest.approx(first["hf"], abs=1e-4)


SAME = ("reward", "tools", "episode")  # metric namespaces a step's rollouts alone decide
