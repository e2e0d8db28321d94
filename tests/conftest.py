from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from reasonrl.models import load_tokenizer
from reasonrl.tasks import Sample, render_prompt


@pytest.fixture
def tiny_qwen() -> Qwen2ForCausalLM:
    """A 1-layer random Qwen2 (vocab 32) for tests that need any causal LM, fast."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        eos_token_id=1,
        pad_token_id=0,
        bos_token_id=2,
    )
    return Qwen2ForCausalLM(config)


# Episodes with tools: prompts and the completions ``tool_model`` was fit to write (a calculator
# call, an answer without a call, a call of a tool that does not exist), answers appended.
SCRIPTS = {
    "What is 12 + 30?": "<tool>calculator 12+30</tool><result>42</result><answer>42</answer>",
    "What is 2 + 5?": "<answer>7</answer>",
    "Use the abacus on 3.": "<tool>abacus 3</tool><result>error: unknown tool 'abacus' "
    "(tools: calculator)</result><answer>3</answer>",
}


# Two habits for one prompt, fit half and half: call the calculator and be right, or answer by
# hand and be wrong; a group of its completions then has rewards that differ.
CHOICE = "Add 57 and 68."
CHOICES = [
    "<tool>calculator 57+68</tool><result>125</result><answer>125</answer>",
    "<answer>115</answer>",
]


@pytest.fixture(scope="session")
def tool_scripts() -> dict[str, str]:
    """Prompts and the completions ``tool_model`` writes."""
    return SCRIPTS


@pytest.fixture(scope="session")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a tiny Qwen2 (the bundled tokenizer) fit to ``SCRIPTS`` and
    ``CHOICES`` after their prompts (r1 style, chat template): the tool loop runs on real
    ``generate`` calls."""
    tok = load_tokenizer("bundled")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    pairs = [*SCRIPTS.items(), *((CHOICE, c) for c in CHOICES)]
    prompts = [render_prompt(Sample(q, "0"), tok) for q, _ in pairs]
    texts = [p + a + tok.eos_token for p, (_, a) in zip(prompts, pairs, strict=True)]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="right")
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    for i, p in enumerate(prompts):
        labels[i, : len(tok(p).input_ids)] = -100
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(120):
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    path = tmp_path_factory.mktemp("tool-model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
