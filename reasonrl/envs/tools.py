"""Tools and environments in TRL's shapes, and the toolbox one episode calls them through.

A tool is a typed Python function with a Google-style docstring (TRL's ``tools=``): its JSON
schema is ``transformers.utils.get_json_schema``'s, which refuses a function without hints or
argument docs. An environment is a class whose instance serves one episode (TRL's
``environment_factory``): ``reset(sample)`` prepares it for the episode's problem, and its
public methods other than ``reset`` and ``get_reward`` are tools. Whatever goes wrong in a call
(a malformed call, an unknown tool, bad arguments, an exception, a deadline) becomes an
observation with an error kind, which the model reads and the metrics count; it never raises.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from transformers.utils import get_json_schema

from reasonrl.envs.protocol import ChatProtocol, Observation, TagProtocol, ToolCall

# The kinds of failed calls, as observations and metrics name them.
ERRORS = ("malformed", "unknown_tool", "bad_arguments", "tool_error", "timeout")


def environment_tools(environment: Any) -> list[Callable[..., Any]]:
    """An environment instance's tools, as TRL finds them: the public functions of its class
    other than ``reset`` and ``get_reward``, bound to the instance."""
    return [
        getattr(environment, name)
        for name, _ in inspect.getmembers(type(environment), predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    ]


class Toolbox:
    """The tools one episode may call: ``tools`` (shared functions) and its own environment
    instance's methods. ``output_chars`` caps each observation's text. ``protocol``: the format
    the model calls them in (``reasonrl.envs.protocol``; by default the tag protocol), and for
    a chat model's own format, ``messages``: the conversation so far (the prompt's user
    message, then the turns), which the template renders."""

    def __init__(
        self,
        tools: Sequence[Callable[..., Any]],
        environment: Any | None = None,
        output_chars: int = 512,
        protocol: TagProtocol | ChatProtocol | None = None,
        messages: list[dict] | None = None,
    ) -> None:
        every = [*tools, *([] if environment is None else environment_tools(environment))]
        self.tools = {fn.__name__: fn for fn in every}
        self.schemas = [get_json_schema(fn) for fn in every]  # the chat template's ``tools=``
        self.environment, self.output_chars = environment, output_chars
        self.protocol = protocol or TagProtocol()
        self.messages = messages or []

    def call(self, call: ToolCall | str) -> Observation:
        """Run ``call`` (a string: the reason a call did not parse)."""
        if isinstance(call, str):
            return Observation(f"error: {call}", None, "malformed")
        fn = self.tools.get(call.name)
        if fn is None:
            known = ", ".join(sorted(self.tools))
            return Observation(
                f"error: unknown tool {call.name!r} (tools: {known})", None, "unknown_tool"
            )
        try:
            kwargs = self._arguments(fn, call.arguments)
            inspect.signature(fn).bind(**kwargs)
        except TypeError as e:
            return Observation(f"error: {e}", call.name, "bad_arguments")
        try:
            text = str(fn(**kwargs))
        except TimeoutError as e:
            return Observation(f"error: timeout: {e}", call.name, "timeout")
        except Exception as e:  # a tool's failure is the model's to read, never the step's
            return Observation(f"error: {type(e).__name__}: {e}", call.name, "tool_error")
        return Observation(self._cap(text), call.name)

    def _cap(self, text: str) -> str:
        if len(text) <= self.output_chars:
            return text
        return text[: self.output_chars] + f"... [{len(text) - self.output_chars} more characters]"

    @staticmethod
    def _arguments(fn: Callable[..., Any], arguments: dict[str, Any] | str) -> dict[str, Any]:
        if isinstance(arguments, dict):
            return arguments
        params = list(inspect.signature(fn).parameters)
        if len(params) != 1:
            raise TypeError(
                f"{fn.__name__} takes {len(params)} arguments: call it with a JSON object"
            )
        return {params[0]: arguments}
