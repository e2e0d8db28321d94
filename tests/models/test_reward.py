"""Reward models on the bundled checkpoint: both heads score, save and reload identically."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from reasonrl.config import ConfigError, load_config
from reasonrl.models import load_tokenizer, resolve_model_path
from reasonrl.models.reward import (
    RewardModel,
    add_lora,
    load_reward_model,
    pad_left,
    pad_right,
    saved_head,
)

TEXTS = [
    ("12 + 7 =", "<think>12+7=19</think> <answer>19</answer>"),
    ("5 - 9 + 40 =", "<think>5-9=-4, -4+40=36</think> <answer>36</answer>"),
    ("3 + 3 =", "<answer>6</answer>"),
]


def _batch(tok):
    enc = lambda texts: tok(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = enc(p for p, _ in TEXTS)
    responses = [ids + [tok.eos_token_id] for ids in enc(r for _, r in TEXTS)]
    return prompts, responses


def test_pad_left_by_hand():
    ids, mask = pad_left([[5, 6], [7]], [[8], [9, 10, 11]], pad_id=0)
    assert ids.tolist() == [[0, 5, 6, 8], [7, 9, 10, 11]]
    assert mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]


@pytest.mark.parametrize("head", ["value", "classification"])
def test_scores_ignore_padding_and_survive_a_save(head, tmp_path):
    torch.manual_seed(0)
    tok = load_tokenizer("bundled")
    rm = load_reward_model("bundled", head=head, device="cpu").eval()
    if head == "value":  # its head starts at zero: give it something to save
        torch.nn.init.normal_(rm.model.head.weight)
    prompts, responses = _batch(tok)
    ids, mask = pad_left(prompts, responses, tok.pad_token_id)
    with torch.no_grad():
        scores = rm(ids, mask)
        pairs = zip(prompts, responses, strict=True)
        alone = [rm(*pad_left([p], [r], tok.pad_token_id)).item() for p, r in pairs]
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert scores.std() > 0
    assert torch.allclose(scores, torch.tensor(alone), atol=1e-5)  # left padding changes nothing

    rm.save_pretrained(tmp_path / "rm")
    assert saved_head(str(tmp_path / "rm")) == head
    again = load_reward_model(str(tmp_path / "rm"), device="cpu").eval()
    assert isinstance(again, RewardModel) and again.head == head
    with torch.no_grad():  # equal weights; a fresh head's memory layout may move the last ulp
        assert torch.allclose(again(ids, mask), scores, rtol=0, atol=1e-6)
    other = "classification" if head == "value" else "value"
    with pytest.raises(ConfigError, match=f"{head!r} head, not {other!r}"):
        load_reward_model(str(tmp_path / "rm"), head=other, device="cpu")


def test_a_causal_lm_needs_a_head():
    assert saved_head(resolve_model_path("bundled")) is None
    with pytest.raises(ConfigError, match="not a saved reward model"):
        load_reward_model("bundled", device="cpu")
    with pytest.raises(ConfigError, match="unknown reward-model head"):
        load_reward_model("bundled", head="linear", device="cpu")


def test_a_loaded_reward_model_does_not_follow_its_file(tmp_path):
    # transformers maps safetensors files into memory; a frozen reward model would follow a
    # `cp` over its directory in the middle of an RL run if its weights were not copied out.
    tok = load_tokenizer("bundled")
    load_reward_model("bundled", head="classification", device="cpu").save_pretrained(tmp_path)
    rm = load_reward_model(str(tmp_path), device="cpu").eval()
    ids, mask = pad_left(*_batch(tok), tok.pad_token_id)
    with torch.no_grad():
        start = rm(ids, mask)
    weights = tmp_path / "model.safetensors"
    shifted = {k: v + 1.0 for k, v in load_file(weights).items()}
    save_file(shifted, tmp_path / "other.safetensors", metadata={"format": "pt"})
    with open(weights, "r+b") as f:  # same inode, as cp writes it
        f.write((tmp_path / "other.safetensors").read_bytes())
    with torch.no_grad():
        assert torch.equal(rm(ids, mask), start)
        assert not torch.allclose(load_reward_model(str(tmp_path), device="cpu")(ids, mask), start)


def test_pad_right_by_hand():
    ids, mask = pad_right([([5], [6, 7]), ([8, 9, 10], [11])], pad_id=0)
    assert ids.tolist() == [[[5, 0, 0], [6, 7, 0]], [[8, 9, 10], [11, 0, 0]]]
    assert mask.tolist() == [[[1, 0, 0], [1, 1, 0]], [[1, 1, 1], [1, 0, 0]]]


@pytest.mark.parametrize(
    ("head", "pool", "likelihood"),
    [("value", "last", 0.0), ("classification", "last", 0.0), ("value", "mean", 1.5)],
)
def test_shared_prompt_scores_and_gradients_equal_full_sequences(head, pool, likelihood):
    torch.manual_seed(0)
    tok = load_tokenizer("bundled")
    rm = load_reward_model("bundled", head, device="cpu", pool=pool, likelihood=likelihood)
    if head == "value":
        torch.nn.init.normal_(rm.model.head.weight, std=0.1)
    prompts, responses = _batch(tok)
    groups = [(responses[i], responses[(i + 1) % 3]) for i in range(3)]  # K = 2 per prompt
    fast = rm(
        *pad_left(prompts, [[] for _ in prompts], tok.pad_token_id),
        responses=pad_right(groups, tok.pad_token_id),
    )
    # the oracle: every prompt + response as its own left-padded sequence
    rows = [(p, r) for p, group in zip(prompts, groups, strict=True) for r in group]
    lengths = torch.tensor([len(r) for _, r in rows])
    slow = rm(*pad_left([p for p, _ in rows], [r for _, r in rows], tok.pad_token_id), lengths)
    assert fast.shape == (3, 2)
    torch.testing.assert_close(fast.flatten(), slow, rtol=0, atol=1e-5)
    grads = []
    for scores in (fast, slow):
        rm.zero_grad()
        (scores.flatten() * torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 2.0])).sum().backward()
        grads.append([p.grad.clone() for p in rm.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_mean_pooling_averages_the_response_tokens_and_is_saved(tmp_path):
    torch.manual_seed(0)
    tok = load_tokenizer("bundled")
    rm = load_reward_model("bundled", head="value", device="cpu", pool="mean").eval()
    torch.nn.init.normal_(rm.model.head.weight, std=0.1)
    prompts, responses = _batch(tok)
    lengths = torch.tensor([len(r) for r in responses])
    ids, mask = pad_left(prompts, responses, tok.pad_token_id)
    with torch.no_grad():
        scores = rm(ids, mask, lengths)
        hidden = rm.model.decoder(
            input_ids=ids[:1, -len(prompts[0] + responses[0]) :]
        ).last_hidden_state
        per_token = rm.model.head(hidden).squeeze(-1)[0]
    # by hand: the mean of the head over the first row's response positions
    torch.testing.assert_close(scores[0], per_token[-len(responses[0]) :].mean(), rtol=0, atol=1e-5)
    fast = rm(
        *pad_left(prompts, [[] for _ in prompts], tok.pad_token_id),
        responses=pad_right([(r,) for r in responses], tok.pad_token_id),
    )
    torch.testing.assert_close(fast.flatten(), scores, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="response lengths"):
        rm(ids, mask)

    rm.save_pretrained(tmp_path / "rm")
    again = load_reward_model(str(tmp_path / "rm"), device="cpu").eval()
    assert again.pool == "mean"
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask, lengths), scores, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="'mean' pooling, not 'last'"):
        load_reward_model(str(tmp_path / "rm"), device="cpu", pool="last")
    with pytest.raises(ConfigError, match="needs the value head"):
        load_reward_model("bundled", head="classification", device="cpu", pool="mean")


def test_likelihood_adds_the_mean_response_logprob_and_is_saved(tmp_path):
    torch.manual_seed(0)
    tok = load_tokenizer("bundled")
    rm = load_reward_model("bundled", head="value", device="cpu", likelihood=2.0).eval()
    torch.nn.init.normal_(rm.model.head.weight, std=0.1)
    prompts, responses = _batch(tok)
    lengths = torch.tensor([len(r) for r in responses])
    ids, mask = pad_left(prompts, responses, tok.pad_token_id)
    lm = AutoModelForCausalLM.from_pretrained(resolve_model_path("bundled")).eval()
    with torch.no_grad():
        scores = rm(ids, mask, lengths)
        # by hand, each sequence alone: the head at its last token + 2 × the causal LM's mean
        # log-probability of its response tokens
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            seq = torch.tensor([p + r])
            logp = lm(seq).logits[0, :-1].log_softmax(-1)
            picked = logp[torch.arange(len(p) - 1, len(p) + len(r) - 1), torch.tensor(r)]
            head = rm.model.head(rm.model.decoder(input_ids=seq).last_hidden_state[0, -1])
            torch.testing.assert_close(scores[i], head[0] + 2.0 * picked.mean(), atol=1e-4, rtol=0)

    rm.save_pretrained(tmp_path / "rm")
    assert not (tmp_path / "rm" / "lm_head.pt").exists()  # tied: it is the embedding
    again = load_reward_model(str(tmp_path / "rm"), device="cpu").eval()
    assert again.likelihood == 2.0
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask, lengths), scores, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="likelihood weight 2.0, not 1.0"):
        load_reward_model(str(tmp_path / "rm"), device="cpu", likelihood=1.0)
    with pytest.raises(ValueError, match="need the response lengths"):
        rm(ids, mask)


def test_an_untied_lm_head_is_saved_beside_the_decoder(tmp_path):
    torch.manual_seed(0)
    tok = load_tokenizer("bundled")
    rm = load_reward_model("bundled", head="value", device="cpu", likelihood=1.0).eval()
    untied = torch.nn.Linear(*reversed(rm.model.lm_head.weight.shape), bias=False)
    torch.nn.init.normal_(untied.weight, std=0.05)
    rm.model.lm_head = untied
    rm.model.decoder.config.tie_word_embeddings = False
    prompts, responses = _batch(tok)
    lengths = torch.tensor([len(r) for r in responses])
    ids, mask = pad_left(prompts, responses, tok.pad_token_id)
    rm.save_pretrained(tmp_path / "rm")
    assert (tmp_path / "rm" / "lm_head.pt").is_file()
    again = load_reward_model(str(tmp_path / "rm"), device="cpu").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask, lengths), rm(ids, mask, lengths))
    (tmp_path / "rm" / "lm_head.pt").unlink()
    with pytest.raises(FileNotFoundError, match="lm_head.pt"):
        load_reward_model(str(tmp_path / "rm"), device="cpu")


def test_likelihood_needs_the_value_head():
    with pytest.raises(ConfigError, match="needs the value head"):
        RewardModel(torch.nn.Module(), "classification", likelihood=1.0)
    with pytest.raises(ConfigError, match="rm.likelihood needs rm.head=value"):
        load_config("tiny-rm", ["rm.head=classification", "rm.likelihood=1"])


def test_lora_leaves_the_lm_head_frozen():
    from reasonrl.config import LoRAConfig

    rm = add_lora(load_reward_model("bundled", "value", device="cpu", likelihood=1.0), LoRAConfig())
    assert not rm.model.lm_head.weight.requires_grad
    assert rm.model.head.weight.requires_grad


def test_likelihood_skips_a_first_token_whose_prompt_was_cut_away():
    torch.manual_seed(0)
    tok = load_tokenizer("bundled")
    rm = load_reward_model("bundled", head="value", device="cpu", likelihood=1.0).eval()
    prompts, responses = _batch(tok)
    prompts[1] = []  # truncated away entirely: nothing predicts the response's first token
    lm = AutoModelForCausalLM.from_pretrained(resolve_model_path("bundled")).eval()
    with torch.no_grad():
        ids = torch.tensor([responses[1]])
        logp = lm(ids).logits[0, :-1].log_softmax(-1)
        expected = logp[torch.arange(len(responses[1]) - 1), ids[0, 1:]].mean()
        lengths = torch.tensor([len(r) for r in responses])
        full = rm(*pad_left(prompts, responses, tok.pad_token_id), lengths)
        shared = rm(
            *pad_left(prompts, [[] for _ in prompts], tok.pad_token_id),
            responses=pad_right([[r] for r in responses], tok.pad_token_id),
        )
    torch.testing.assert_close(full[1], expected, rtol=0, atol=1e-5)  # the head starts at 0
    torch.testing.assert_close(shared[:, 0], full, rtol=0, atol=1e-5)
