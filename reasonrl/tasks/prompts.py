"""Prompt formats: the R1-style reasoning format and chat templates."""

from __future__ import annotations

from typing import Any

from reasonrl.tasks.base import Sample

R1_INSTRUCTION = (
    "Think step by step inside <think> </think>, then give only the final answer "
    "inside <answer> </answer>."
)
# Used when the tokenizer has no chat template (a base model), as in DeepSeek-R1-Zero.
R1_PREAMBLE = "A conversation between User and Assistant. The Assistant solves the problem."


def render_prompt(sample: Sample, tokenizer: Any, style: str = "r1", chat: str = "auto") -> str:
    """The text the model is conditioned on; the completion is generated after it.

    ``style`` r1 appends the <think>/<answer> instruction; ``chat`` auto uses the tokenizer's
    chat template when it has one (on: require it, off: never).
    """
    return render_content(prompt_content(sample, style), tokenizer, style, chat)


def prompt_content(sample: Sample, style: str = "r1") -> str:
    """The user message's text: the problem, with the r1 instruction for ``style`` r1."""
    return f"{sample.prompt}\n{R1_INSTRUCTION}" if style == "r1" else sample.prompt


def render_content(
    content: str,
    tokenizer: Any,
    style: str = "r1",
    chat: str = "auto",
    tools: list[dict] | None = None,
) -> str:
    """``render_prompt`` of a user message's text; ``tools``: the JSON schemas a chat template
    shows the model (``apply_chat_template(tools=…)``)."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if chat == "on" and not has_template:
        raise ValueError("task.chat_template=on but the tokenizer has no chat template")
    if has_template and chat != "off":
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            tools=tools,
            tokenize=False,
            add_generation_prompt=True,
        )
    head = f"{R1_PREAMBLE} " if style == "r1" else ""
    return f"{head}User: {content}\nAssistant:"
