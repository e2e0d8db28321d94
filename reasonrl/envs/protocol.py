"""The plain tag protocol of base models and the bundled model.

The model writes ``<tool>calculator 12*34</tool>`` — the tool's name, a space and the text of
its one argument — or, for any tool, ``<tool>{"name": "python", "arguments": {"code": "…"}}
</tool>``; its turn ends at ``</tool>``. The environment's answer follows as
``<result>408</result>`` (environment tokens), then the model's next turn. The compact form is
what a 1.6 M-parameter model with a character-level vocabulary can learn cheaply: JSON costs
some 30 tokens of punctuation and quoting per call, the compact form 2 besides the tags.
"""

from __future__ import annotations

import json

from reasonrl.envs.tools import Observation, ToolCall

CALL_OPEN, CALL_CLOSE = "<tool>", "</tool>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"


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
