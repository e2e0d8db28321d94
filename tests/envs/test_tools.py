import pytest

from reasonrl.config import ConfigError, load_config
from reasonrl.envs import Toolbox, ToolUse, calculator, environment_tools
from reasonrl.envs.protocol import ToolCall, parse_call
from reasonrl.models import load_tokenizer
from reasonrl.tasks.base import Sample


class Counter:
    """An environment as TRL's environment_factory makes them: reset, then tools."""

    def reset(self, sample: Sample) -> None:
        self.total = int(sample.answer)

    def add(self, amount: int) -> str:
        """Add to the running total.

        Args:
            amount: how much to add
        """
        self.total += amount
        return str(self.total)

    def get_reward(self) -> float:
        return float(self.total)

    def _private(self) -> None:
        """Not a tool."""


def broken(text: str) -> str:
    """Always fails.

    Args:
        text: anything
    """
    raise RuntimeError("it broke")


def test_an_environment_s_public_methods_are_its_tools():
    env = Counter()
    assert [fn.__name__ for fn in environment_tools(env)] == ["add"]
    box = Toolbox([calculator], env)
    assert [s["function"]["name"] for s in box.schemas] == ["calculator", "add"]
    assert box.schemas[1]["function"]["parameters"]["properties"]["amount"]["type"] == "integer"


@pytest.mark.parametrize(
    ("call", "text", "error"),
    [
        (ToolCall("calculator", "2*21"), "42", None),
        (ToolCall("calculator", {"expression": "1/4"}), "0.25", None),
        (ToolCall("add", {"amount": 2}), "7", None),
        ("invalid JSON", "error: invalid JSON", "malformed"),
        (ToolCall("abacus", "1"), "error: unknown tool 'abacus'", "unknown_tool"),
        (ToolCall("add", {"amount": 1, "extra": 2}), "error: got an unexpected", "bad_arguments"),
        (ToolCall("broken", {"text": "x", "more": 1}), "error:", "bad_arguments"),
        (ToolCall("broken", "x"), "error: RuntimeError: it broke", "tool_error"),
        (ToolCall("calculator", "1/0"), "error: ZeroDivisionError", "tool_error"),
    ],
)
def test_every_call_ends_as_an_observation(call, text, error):
    env = Counter()
    env.reset(Sample("q", "5"))
    observation = Toolbox([calculator, broken], env).call(call)
    assert observation.text.startswith(text) and observation.error == error


def test_answers_are_cut_to_the_cap():
    def shout(text: str) -> str:
        """Repeat.

        Args:
            text: what to repeat
        """
        return text * 100

    observation = Toolbox([shout], output_chars=10).call(ToolCall("shout", "ab"))
    assert observation.text == "ababababab... [190 more characters]"


def test_a_timeout_is_its_own_kind():
    def slow(code: str) -> str:
        """Never in time.

        Args:
            code: anything
        """
        raise TimeoutError("past 1 s")

    assert Toolbox([slow]).call(ToolCall("slow", "x")).error == "timeout"


@pytest.mark.parametrize(
    ("turn", "call"),
    [
        ("I add. <tool>calculator 12+30</tool>", ToolCall("calculator", "12+30")),
        ("<tool>python\nprint(1)\nprint(2)</tool>", ToolCall("python", "print(1)\nprint(2)")),
        (
            '<tool>{"name": "add", "arguments": {"amount": 3}}</tool>',
            ToolCall("add", {"amount": 3}),
        ),
        ("<tool>{not json}</tool>", "invalid JSON"),
        ('<tool>{"name": 3}</tool>', "a JSON call"),
        ("<tool> </tool>", "the call names no tool"),
        ("calculator 1+1</tool>", "a call is"),
    ],
)
def test_the_tag_protocol_parses_calls(turn, call):
    got = parse_call(turn)
    assert got == call if isinstance(call, ToolCall) else got.startswith(call)


def test_a_recipe_names_tools_and_an_environment():
    cfg = load_config(
        None,
        [
            "rollout.max_turns=3",
            "rollout.tools=[calculator]",
            f"rollout.environment={__name__}:Counter",
        ],
    )
    use = ToolUse.from_config(cfg.rollout)
    _, boxes = use.episodes(
        [Sample("q", "1"), Sample("q", "10")], load_tokenizer("bundled"), cfg.task
    )
    assert boxes[0].environment is not boxes[1].environment  # one instance per episode
    assert boxes[1].call(ToolCall("add", {"amount": 1})).text == "11"
    assert ToolUse.from_config(load_config(None, []).rollout) is None  # single turns
    with pytest.raises(ConfigError, match="calculator"):
        ToolUse.from_config(
            load_config(None, ["rollout.max_turns=2", "rollout.tools=[calculater]"]).rollout
        )
    with pytest.raises(ConfigError, match="needs rollout.tools"):
        load_config(None, ["rollout.max_turns=2"])


class Hinted(Counter):
    def reset(self, sample: Sample) -> str:
        super().reset(sample)
        return f" Start from {self.total}."


def test_what_reset_returns_ends_the_prompt_s_user_message():
    from reasonrl.config import TaskConfig
    from reasonrl.envs import TagProtocol
    from reasonrl.models import load_tokenizer
    from reasonrl.tasks import render_prompt

    tok, task, sample = load_tokenizer("bundled"), TaskConfig(), Sample("Add 3.", "4")
    (plain,), _ = ToolUse([calculator], Counter, 512).episodes([sample], tok, task)
    assert plain == render_prompt(sample, tok)  # reset returned None
    (hinted,), (box,) = ToolUse([calculator], Hinted, 512).episodes([sample], tok, task)
    # TRL's rule: appended to the last message's content, inside the template's user turn
    assert hinted == plain.replace("</answer>.<|im_end|>", "</answer>. Start from 4.<|im_end|>")
    # the bundled template has no tools: the tag protocol, and no schemas in the prompt
    assert isinstance(box.protocol, TagProtocol) and '"name"' not in hinted
