"""The SFT stage on traces that call a tool: the tool's answers are context, never trained on
or counted in the loss's token mean."""

import re

import pytest
import torch

from reasonrl.config import ConfigError, load_config
from reasonrl.envs.protocol import tool_trace
from reasonrl.models import load_tokenizer
from reasonrl.train import sft
from reasonrl.train.run import run


def test_encode_completion_masks_each_tool_answer_and_tokenizes_it_on_its_own():
    tok = load_tokenizer("bundled")
    text = tool_trace("12345 + 678 - 910") + "<result>x</result>"
    ids, trained = sft.encode_completion(tok, text)
    assert tok.decode(ids) == text and len(trained) == len(ids)
    answers = tok.decode([t for t, m in zip(ids, trained, strict=True) if not m])
    assert answers == "<result>12113</result><result>x</result>"
    pieces = ["<think><tool>calculator 12345+678-910</tool>", "<result>12113</result>"]
    head = sum((tok(p, add_special_tokens=False)["input_ids"] for p in pieces), [])
    assert ids[: len(head)] == head  # the pieces' own tokens, as an episode appends them
    plain = "<think>1+2=3</think> <answer>3</answer>"
    plain_ids = tok(plain, add_special_tokens=False)["input_ids"]
    assert sft.encode_completion(tok, plain) == (plain_ids, [1] * len(plain_ids))


def test_a_step_on_tool_traces_trains_the_models_tokens_only(tmp_path, monkeypatch):
    seen = []
    forward, loss = sft.completion_logprobs, sft.sft_loss

    def record_forward(model, ids, attn, width, **kw):
        seen.append({"ids": ids[:, -width:], "present": attn[:, -width:]})
        return forward(model, ids, attn, width, **kw)

    def record_loss(logp, mask, num_tokens):
        seen[-1] |= {"mask": mask, "num_tokens": num_tokens}
        return loss(logp, mask, num_tokens)

    monkeypatch.setattr(sft, "completion_logprobs", record_forward)
    monkeypatch.setattr(sft, "sft_loss", record_loss)
    overrides = ["model.init=null", "task.train_size=32", "task.eval_size=4", "sft.steps=1"]
    overrides += ["sft.examples_per_step=8", "sft.micro_batch_examples=4", "sft.tool_fraction=0.5"]
    overrides += ["eval.before=false", "eval.after=false", "log.checkpoint_every=0"]
    run(load_config("tiny-cold-start", overrides), tmp_path / "run")
    tok = load_tokenizer("bundled")
    calls = 0
    for micro in seen:
        assert micro["num_tokens"] == sum(int(m["mask"].sum()) for m in seen)
        for ids, present, mask in zip(micro["ids"], micro["present"], micro["mask"], strict=True):
            text = tok.decode(ids[present.bool()])
            answers = tok.decode(ids[present.bool() & ~mask.bool()])
            assert answers == "".join(re.findall(r"<result>.*?</result>", text))
            assert torch.equal(mask * present, mask)  # padding never trained
            calls += "<tool>" in text
    assert 0 < calls < 8  # both habits in the step


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_tool_fraction_picks_the_traces(fraction):
    from reasonrl.tasks import Sample
    from reasonrl.train.run import sft_pairs

    cfg = load_config("tiny-cold-start", [f"sft.tool_fraction={fraction}"])
    samples = [Sample("q", "3", {"expression": "1 + 2"})] * 20
    texts = [c for _, c in sft_pairs(cfg, samples)]
    assert sum("<tool>calculator 1+2</tool><result>3</result>" in t for t in texts) == 20 * fraction


def test_tool_fraction_by_difficulty_gives_each_label_its_share():
    from reasonrl.tasks import Sample
    from reasonrl.train.run import sft_pairs

    cfg = load_config("tiny-cold-start", ["sft.tool_fraction={easy: 1.0, hard: 0.0}"])
    easy = Sample("q", "3", {"expression": "1 + 2", "difficulty": "easy"})
    hard = Sample("q", "3", {"expression": "1 + 2", "difficulty": "hard"})
    texts = [c for _, c in sft_pairs(cfg, [easy, hard] * 10)]
    assert ["<tool>" in t for t in texts] == [True, False] * 10
    with pytest.raises(ConfigError, match="no share for difficulty 'medium'.*easy, hard"):
        sft_pairs(cfg, [Sample("q", "3", {"expression": "1 + 2", "difficulty": "medium"})])
