"""Tiny models fit to write given completions, for the tests and benchmarks that need a model
doing something on purpose (call a tool, answer by hand, call a tool that does not exist) on
real ``generate`` calls, in seconds on a CPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from reasonrl.tasks import Sample, render_prompt

# Episodes with tools: prompts and the completions ``tool_model`` is fit to write (a calculator
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

# A chat model's own format (Qwen3's template, Hermes calls): the call ``chat_tool_model``
# writes, and the template's tool message that follows it (the answer 42).
CHAT_CALL = (
    '<think>add</think><tool_call>\n{"name": "calculator", "arguments": '
    '{"expression": "12+30"}}\n</tool_call>'
)
CHAT_ANSWER = (
    "\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
)


class Hint:
    """An environment whose ``reset`` returns text for the prompt (TRL appends it)."""

    def reset(self, sample: Sample) -> str:
        return " Use the calculator."


def fit_to_texts(
    tok: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    hidden: int = 64,
    layers: int = 2,
    steps: int = 120,
    max_positions: int = 256,
    device: str = "cpu",
) -> Qwen2ForCausalLM:
    """A random tiny Qwen2 on ``tok``'s vocabulary (seed 0) trained to write each completion,
    then EOS, after its prompt: full-batch Adam on the completion tokens only."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config).to(device)
    texts = [p + c + tok.eos_token for p, c in zip(prompts, completions, strict=True)]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="right").to(device)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    for i, p in enumerate(prompts):
        labels[i, : len(tok(p).input_ids)] = -100
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def tool_model(tok: Any, *, hidden: int = 64, layers: int = 2, device: str = "cpu") -> Any:
    """A tiny model that writes ``SCRIPTS`` after their prompts, and either of ``CHOICES``
    after ``CHOICE``'s (r1 prompt, chat template): the tool loop's fixture."""
    pairs = [*SCRIPTS.items(), *((CHOICE, c) for c in CHOICES)]
    prompts = [render_prompt(Sample(q, "0"), tok) for q, _ in pairs]
    return fit_to_texts(
        tok, prompts, [c for _, c in pairs], hidden=hidden, layers=layers, device=device
    )
