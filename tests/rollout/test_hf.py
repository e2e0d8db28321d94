import pytest
import torch

from reasonrl.config import ModelConfig
from reasonrl.envs import Toolbox, calculator
from reasonrl.models import load_model, load_tokenizer
from reasonrl.models.forward import completion_logprobs
from reasonrl.rollout import HFEngine
from reasonrl.rollout.hf import completion_mask
from reasonrl.tasks import Sample, render_prompt
from reasonrl.testing import CHAT_ANSWER, CHAT_CALL


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


@pytest.fixture(scope="module")
def scripted(tool_model, tool_scripts):
    tok = load_tokenizer(str(tool_model))
    model = load_model(ModelConfig(path=str(tool_model), device="cpu"))
    return model, tok, [render_prompt(Sample(q, "0"), tok) for q in tool_scripts]


def _boxes(n: int) -> list[Toolbox]:
    return [Toolbox([calculator]) for _ in range(n)]


def test_an_episode_appends_each_answer_as_environment_tokens(scripted, tool_scripts):
    model, tok, prompts = scripted
    engine = HFEngine(model, tok)
    ro = engine.generate(
        prompts, max_new_tokens=90, seeds=[1, 2, 3], toolboxes=_boxes(3), max_turns=3
    )
    assert ro.texts == list(tool_scripts.values())
    assert ro.finished.all()
    calc, plain, unknown = ro.episodes
    assert [role for role, _ in calc.turns] == ["model", "tool", "model"]
    assert calc.turns[1] == ("tool", "<result>42</result>")
    assert calc.calls == {"calculator": 1} and calc.errors == {}
    assert plain.turns == [("model", "<answer>7</answer>")] and plain.calls == {}
    assert unknown.errors == {"unknown_tool": 1}
    for row, episode in enumerate(ro.episodes):
        present = ro.completion_mask[row].bool()
        ids, model_mask = ro.completion_ids[row][present], ro.model_mask[row][present]
        # the tokens, segment by segment: the model's turns as sampled, each answer tokenized
        # on its own (add_special_tokens=False) and appended
        segments = torch.diff(model_mask, prepend=model_mask[:1] ^ 1).nonzero().flatten()
        bounds = [*segments.tolist(), len(ids)]
        for (role, text), start, end in zip(episode.turns, bounds[:-1], bounds[1:], strict=True):
            assert bool(model_mask[start]) == (role == "model")
            if role == "tool":
                assert ids[start:end].tolist() == tok(text, add_special_tokens=False).input_ids
            else:
                assert tok.decode(ids[start:end], skip_special_tokens=True) == text
    # the sampling log-probs are a teacher-forced forward's over the whole episode, on the
    # model's tokens; 0 on the environment's
    c = ro.completion_ids.shape[1]
    with torch.no_grad():
        logp, _ = completion_logprobs(model, ro.input_ids, ro.attention_mask, c)
    m = ro.model_mask.bool()
    torch.testing.assert_close(ro.logprobs[m], logp[m], atol=1e-4, rtol=0)
    assert (ro.logprobs[~m] == 0).all()
    assert ro.lengths.tolist() == [int(r.sum()) for r in ro.model_mask]


def test_episodes_are_drawn_from_their_seeds_alone(scripted):
    model, tok, prompts = scripted
    kwargs = dict(max_new_tokens=90, temperature=1.5, seeds=[7, 8, 9], max_turns=3)
    one = HFEngine(model, tok).generate(prompts, toolboxes=_boxes(3), **kwargs)
    apart = HFEngine(model, tok, batch_completions=1).generate(
        prompts, toolboxes=_boxes(3), **kwargs
    )
    assert torch.equal(one.completion_ids, apart.completion_ids)
    assert torch.equal(one.model_mask, apart.model_mask)
    # a row that calls nothing is the single-turn completion of its seed
    single = HFEngine(model, tok).generate(
        prompts[1:2], max_new_tokens=90, temperature=1.5, seeds=[8]
    )
    n = int(single.completion_mask.sum())
    assert one.completion_ids[1, :n].tolist() == single.completion_ids[0, :n].tolist()


def test_an_answer_past_the_budget_ends_the_episode_unfinished(scripted):
    model, tok, prompts = scripted
    call = tok("<tool>calculator 12+30</tool>", add_special_tokens=False).input_ids
    ro = HFEngine(model, tok).generate(
        prompts[:1], max_new_tokens=len(call) + 3, greedy=True, toolboxes=_boxes(1), max_turns=3
    )
    assert ro.texts == ["<tool>calculator 12+30</tool>"] and not ro.finished[0]
    assert ro.episodes[0].turns == [("model", "<tool>calculator 12+30</tool>")]
    assert ro.episodes[0].calls == {"calculator": 1}


def test_a_chat_model_calls_tools_in_its_template_s_format(chat_tool_model):
    """Qwen3's template on the bundled tokenizer: the prompt shows the tools' schemas and the
    environment's hint; a tiny model fit to one episode calls the calculator in the Hermes
    format, gets the template's tool message and answers. The episode's tokens are the ones
    sampled, though the template re-renders the model's turn (``<think>`` re-spaced)."""
    model, tok, use, task = chat_tool_model
    prompts, boxes = use.episodes([Sample("What is 12 + 30?", "42")], tok, task)
    assert '"name": "calculator"' in prompts[0] and "Use the calculator.<|im_end|>" in prompts[0]
    ro = HFEngine(model, tok).generate(
        prompts, max_new_tokens=150, greedy=True, toolboxes=boxes, max_turns=3
    )
    (e,) = ro.episodes
    assert e.calls == {"calculator": 1} and e.errors == {}
    assert [role for role, _ in e.turns] == ["model", "tool", "model"]
    assert e.turns[1] == ("tool", "42") and ro.finished[0]
    ids, mask = ro.completion_ids[0].tolist(), ro.model_mask[0].tolist()
    env = [t for t, m in zip(ids, mask, strict=True) if not m]
    assert tok.decode(env) == CHAT_ANSWER
    # the log-probs sampled are a teacher-forced forward's over the episode on model tokens
    with torch.no_grad():
        logp, _ = completion_logprobs(model, ro.input_ids, ro.attention_mask, len(ids))
    m = ro.model_mask.bool()
    torch.testing.assert_close(ro.logprobs[m], logp[m], atol=1e-4, rtol=0)
    # re-rendering the conversation would give other tokens than the ones trained
    again = tok.apply_chat_template(
        boxes[0].messages, tools=boxes[0].schemas, tokenize=True, return_dict=False
    )
    sampled = ro.input_ids[0][ro.attention_mask[0].bool()].tolist() + ids
    assert e.turns[0] == ("model", CHAT_CALL) and again != sampled[: len(again)]
