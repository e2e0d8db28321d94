"""Tools and environments for multi-turn episodes, in TRL's shapes (``tools=`` functions and
``environment_factory`` classes), and the formats a model calls them in (``protocol.py``).

A recipe turns episodes on with ``rollout.max_turns`` > 1 and names what the model may call:
``rollout.tools`` (built-ins ``calculator`` and ``python``, or ``my_pkg.module:function``) and
``rollout.environment`` (``my_pkg.module:Class``: one instance per episode, ``reset(sample)``
then its public methods are tools; what ``reset`` returns is appended to the prompt, as TRL
does). A chat model whose template calls tools (Qwen2.5/Qwen3/Hermes ``<tool_call>``, Llama
3.1/3.2 JSON) sees the tools' schemas in its prompt and calls them in its own format; base
models and the bundled model use the tag protocol. The ``hf`` engine runs the loop
(``rollout/hf.py``), in-process or on Ray's rollout workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from reasonrl.config import ConfigError, RolloutConfig, TaskConfig, import_path, resolve_callable
from reasonrl.envs.calculator import calculator
from reasonrl.envs.protocol import ChatProtocol, Observation, TagProtocol, ToolCall, protocol_for
from reasonrl.envs.tools import ERRORS, Toolbox, environment_tools
from reasonrl.tasks.base import Sample
from reasonrl.tasks.prompts import prompt_content, render_content


@dataclass(frozen=True)
class ToolUse:
    """A run's tools and environment class, resolved once, and its episodes' model turns
    (``rollout.max_turns``); ``episodes`` gives each episode its own."""

    tools: list[Callable[..., Any]]
    environment: Callable[[], Any] | None
    output_chars: int
    max_turns: int = 2

    @classmethod
    def from_config(cls, ro: RolloutConfig) -> ToolUse | None:
        """None when the run has single turns (``max_turns`` 1)."""
        if ro.max_turns == 1:
            return None

        def python() -> Callable[..., Any]:
            from reasonrl.envs.python import python_tool  # the sandbox: only when asked for

            return python_tool(ro.tool_timeout_s, ro.tool_output_chars, ro.tool_sandbox_url)

        builtins = {"calculator": lambda: calculator, "python": python}
        tools = []
        for name in ro.tools:
            make = resolve_callable(name, builtins, "tool", "my_pkg.tools:fn")
            tools.append(make() if name in builtins else make)
        environment = None
        if ro.environment is not None:
            environment = import_path(ro.environment, "environment")
            if not callable(getattr(environment, "reset", None)):
                raise ConfigError(f"environment {ro.environment!r} has no reset(sample) method")
        return cls(tools, environment, ro.tool_output_chars, ro.max_turns)

    def episodes(
        self, samples: Sequence[Sample], tokenizer: Any, task: TaskConfig
    ) -> tuple[list[str], list[Toolbox]]:
        """Each episode's prompt (rendered as ``task`` says) and its toolbox with a fresh
        environment reset to its sample. What ``reset`` returns (a string or None) is appended
        to the prompt's user message, as TRL does. A chat model whose template calls tools
        (``protocol_for``) gets the tools' schemas in its prompt and calls them in its own
        format; other models use the tag protocol."""
        protocol = protocol_for(tokenizer, task.chat_template)
        prompts, boxes = [], []
        for sample in samples:
            env, opening = None, None
            if self.environment is not None:
                env = self.environment()
                opening = env.reset(sample)
            box = Toolbox(self.tools, env, self.output_chars, protocol)
            schemas = box.schemas if protocol.native else None
            content = prompt_content(sample, task.prompt) + (opening or "")
            prompts.append(
                render_content(content, tokenizer, task.prompt, task.chat_template, schemas)
            )
            box.messages = [{"role": "user", "content": content}]
            boxes.append(box)
        return prompts, boxes

    def generate_args(
        self, samples: Sequence[Sample], tokenizer: Any, task: TaskConfig
    ) -> tuple[list[str], dict[str, Any]]:
        """The episodes' prompts, and the rollout engine's ``generate`` arguments that run
        them: each its own toolbox, up to ``max_turns`` model turns."""
        prompts, boxes = self.episodes(samples, tokenizer, task)
        return prompts, {"toolboxes": boxes, "max_turns": self.max_turns}


__all__ = [
    "ChatProtocol",
    "TagProtocol",
    "ERRORS",
    "Observation",
    "ToolCall",
    "ToolUse",
    "Toolbox",
    "calculator",
    "environment_tools",
]
