"""The formats a model calls tools in: the plain tag protocol of base models and the bundled
model (below), and chat models' own formats through their chat template (``ChatProtocol``;
``protocol_for`` picks one).

The model writes ``<tool>calculator 12*34</tool>`` — the tool's name, a space and the text of
its one argument — or, for any tool, ``<tool>{"name": "python", "arguments": {"code": "…"}}
</tool>``; its turn ends at ``</tool>``. The environment's answer follows as
``<result>408</result>`` (environment tokens), then the model's next turn. The compact form is
what a 1.6 M-parameter model with a character-level vocabulary can learn cheaply: JSON costs
some 30 tokens of punctuation and quoting per call, the compact form 2 besides the tags.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from reasonrl.envs.calculator import calculator

CALL_OPEN, CALL_CLOSE = "<tool>", "</tool>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"


@dataclass(frozen=True)
class ToolCall:
    """A parsed call: the tool's name and its arguments, by name, or as one text (the compact
    form, for a tool of exactly one parameter)."""

    name: str
    arguments: dict[str, Any] | str


@dataclass(frozen=True)
class Observation:
    """What a call returned: ``text`` (capped), the tool named (None when the call did not
    parse) and the error kind (one of ``envs.tools.ERRORS``; None when the tool answered)."""

    text: str
    tool: str | None
    error: str | None = None


def parse_call(turn: str) -> ToolCall | str:
    """The call a model turn ends with (its text up to and including ``</tool>``), or the
    reason there is none that parses (a string)."""
    end = turn.rfind(CALL_CLOSE)
    start = turn.rfind(CALL_OPEN, 0, max(end, 0))
    if end < 0 or start < 0:
        return f"a call is {CALL_OPEN}name argument{CALL_CLOSE}"
    body = turn[start + len(CALL_OPEN) : end].strip()
    if body.startswith("{"):
        try:
            call = json.loads(body)
        except json.JSONDecodeError as e:
            return f"invalid JSON: {e}"
        if not (
            isinstance(call, dict)
            and isinstance(call.get("name"), str)
            and isinstance(call.get("arguments", {}), dict)
        ):
            return 'a JSON call is {"name": "...", "arguments": {...}}'
        return ToolCall(call["name"], call.get("arguments", {}))
    parts = body.split(maxsplit=1)  # the name, then whitespace (a space or a newline)
    if not parts:
        return "the call names no tool"
    return ToolCall(parts[0], parts[1] if len(parts) > 1 else "")


def result_text(observation: Observation) -> str:
    """The text appended to the episode after a call."""
    return f"{RESULT_OPEN}{observation.text}{RESULT_CLOSE}"


def result_ids(tokenizer: Any, text: str) -> list[int]:
    """The tokens of ``<result>text</result>``: the tags and ``text`` each tokenized on their
    own, so that the result's tokens are the ones the model writes when it copies it (a BPE
    merge across the tag, as ``>-`` in ``<result>-4``, would leave the model a sign it never
    writes alone). Every place that appends or trains on a result uses it."""
    return [
        t
        for piece in (RESULT_OPEN, text, RESULT_CLOSE)
        for t in tokenizer(piece, add_special_tokens=False)["input_ids"]
    ]


# ------------------------------------------------------------- chat models' native formats


class TagProtocol:
    """The tag protocol as an episode's format: a turn with a call ends at ``</tool>``."""

    native = False  # the prompt does not carry the tools' schemas
    stop = CALL_CLOSE

    def call_in(self, turn: str, ended: bool) -> ToolCall | str | None:
        """The call a turn makes (a string: why it does not parse), None when it makes none.
        ``ended``: the turn ended at EOS (an answer, never a call here)."""
        return None if ended or CALL_CLOSE not in turn else parse_call(turn)

    def answer_text(self, observation: Observation) -> str:
        """The answer as the episode's turns record it."""
        return result_text(observation)

    def answer_ids(
        self,
        tokenizer: Any,
        messages: list[dict],
        schemas: list[dict],
        observation: Observation,
        eos_ids: list[int],
    ) -> list[int]:
        """The environment tokens appended after a call (``messages`` and ``schemas``, the
        conversation a chat template renders, play no part here)."""
        return result_ids(tokenizer, observation.text)


HERMES_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ChatProtocol:
    """A chat model's own tool-calling format, from its chat template: the prompt carries the
    tools' schemas (``apply_chat_template(tools=…)``), a turn ends at the model's end of turn
    (EOS), a call is written in the family's format — ``hermes`` (Qwen2.5, Qwen3, Hermes:
    ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``) or ``llama3`` (Llama 3.1/3.2: the
    whole turn is ``{"name": …, "parameters": {…}}``) — and the answer is the template's tool
    message."""

    family: str
    native = True
    stop = None  # EOS ends every turn

    def call_in(self, turn: str, ended: bool) -> ToolCall | str | None:
        if not ended:  # cut by the budget
            return None
        if self.family == "hermes":
            if "<tool_call>" not in turn:
                return None
            found = HERMES_CALL.search(turn)
            if found is None:
                return "a call is <tool_call>{...}</tool_call>"
            return _json_call(found.group(1), "arguments")
        body = turn.strip()
        return _json_call(body, "parameters") if body.startswith("{") else None

    def answer_text(self, observation: Observation) -> str:
        """The answer as the episode's turns record it: the tool's text (the template wraps it
        in the tokens ``answer_ids`` appends)."""
        return observation.text

    def answer_ids(
        self,
        tokenizer: Any,
        messages: list[dict],
        schemas: list[dict],
        observation: Observation,
        eos_ids: list[int],
    ) -> list[int]:
        """The tool message's tokens, appended after the model's turn (its EOS included), in
        the conversation ``messages`` (the prompt's, then the turns so far; ``schemas``: the
        tools'): the template rendered for the conversation so far and with the tool message;
        where the first is a prefix of the second, its tokens after the model's EOS and the
        difference. A template that rewrites earlier turns (verl #6501) gives the tokens after
        the same call in a one-call conversation instead. The episode's own tokens are never
        re-tokenized either way: the model's are the ones it sampled."""
        tool = {"role": "tool", "name": observation.tool or "unknown", "content": observation.text}
        so_far = _render(tokenizer, messages, schemas, False)
        full = _render(tokenizer, [*messages, tool], schemas, True)
        if full[: len(so_far)] != so_far:
            call = {"type": "function", "function": {"name": tool["name"], "arguments": {}}}
            one = [messages[0], {"role": "assistant", "content": "", "tool_calls": [call]}]
            so_far = _render(tokenizer, one, schemas, False)
            full = _render(tokenizer, [*one, tool], schemas, True)
            if full[: len(so_far)] != so_far:
                raise ValueError(
                    "the chat template renders a tool message by changing the turns before it"
                )
        ends = [k for k, t in enumerate(so_far) if t in eos_ids]
        if not ends:
            raise ValueError("the chat template ends an assistant turn without an EOS token")
        return so_far[ends[-1] + 1 :] + full[len(so_far) :]


def _render(
    tokenizer: Any, messages: list[dict], schemas: list[dict], generation_prompt: bool
) -> list[int]:
    return tokenizer.apply_chat_template(
        messages,
        tools=schemas,
        add_generation_prompt=generation_prompt,
        tokenize=True,
        return_dict=False,
    )


def _json_call(body: str, key: str) -> ToolCall | str:
    try:
        call = json.loads(body)
    except json.JSONDecodeError as e:
        return f"invalid JSON: {e}"
    arguments = call.get(key, call.get("arguments", {})) if isinstance(call, dict) else None
    if not (
        isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(arguments, dict)
    ):
        return f'a call is {{"name": "...", "{key}": {{...}}}}'
    return ToolCall(call["name"], arguments)


def protocol_for(tokenizer: Any, chat: str) -> TagProtocol | ChatProtocol:
    """An episode's format: the chat template's own when the prompts use a template that can
    call tools (``task.chat_template`` not off) of a family reasonrl parses; else the tags
    (base models, the bundled model, whose template has no tools)."""
    template = getattr(tokenizer, "chat_template", None)
    if chat == "off" or not isinstance(template, str) or "tools" not in template:
        return TagProtocol()
    if "<tool_call>" in template:
        return ChatProtocol("hermes")
    if "ipython" in template:
        return ChatProtocol("llama3")
    return TagProtocol()


def tool_trace(expression: str) -> str:
    """A cold-start trace that hands the whole + / − ``expression`` to the calculator and
    answers with its result: ``<think><tool>calculator 57+87-70</tool><result>74</result>
    </think> <answer>74</answer>``. The ``<result>`` part is the environment's, never trained
    on (``train/sft.py``). Mixed with traces by hand (``tasks/traces.py``), it leaves a model
    that either calls or computes; on terms too long to add by hand only the call is right, and
    RL with a price per call can teach it when to call."""
    call = expression.replace(" ", "")
    result = calculator(call)
    return (
        f"<think>{CALL_OPEN}calculator {call}{CALL_CLOSE}{RESULT_OPEN}{result}{RESULT_CLOSE}"
        f"</think> <answer>{result}</answer>"
    )
