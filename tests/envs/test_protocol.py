"""Chat models' own tool-calling formats, on real chat templates (TRL's copies of Qwen2.5's,
Qwen3's and Llama 3.2's) set on the bundled tokenizer: which format a tokenizer gets, how calls
parse, and the tool message appended as the template's tokens without re-tokenizing the turns
before it, also with a template that rewrites them (Qwen3 re-spaces a turn's ``<think>``)."""

from importlib.resources import files

import pytest

from reasonrl.envs import ChatProtocol, TagProtocol, Toolbox, calculator
from reasonrl.envs.protocol import Observation, ToolCall, protocol_for, result_ids
from reasonrl.models import load_tokenizer

LLAMA_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def template(name: str) -> str:
    return (files("trl") / "chat_templates" / f"{name}.jinja").read_text()


def tokenizer(name: str):  # noqa: ANN201
    tok = load_tokenizer("bundled")
    tok.chat_template = template(name)
    if name.startswith("llama"):
        tok.add_special_tokens({"additional_special_tokens": LLAMA_TOKENS})
        tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    return tok


def test_a_template_that_calls_tools_gets_its_own_format():
    assert isinstance(protocol_for(load_tokenizer("bundled"), "auto"), TagProtocol)
    assert protocol_for(tokenizer("qwen2_5"), "auto") == ChatProtocol("hermes")
    assert protocol_for(tokenizer("qwen3"), "on") == ChatProtocol("hermes")
    assert protocol_for(tokenizer("llama3_2"), "auto") == ChatProtocol("llama3")
    assert isinstance(protocol_for(tokenizer("qwen2_5"), "off"), TagProtocol)  # a base prompt


@pytest.mark.parametrize(
    ("family", "turn", "ended", "call"),
    [
        (
            "hermes",
            '<think>x</think><tool_call>\n{"name": "calculator", "arguments": '
            '{"expression": "2*3"}}\n</tool_call>',
            True,
            ToolCall("calculator", {"expression": "2*3"}),
        ),
        ("hermes", "<answer>6</answer>", True, None),
        ("hermes", '<tool_call>{"name": "calculator"', False, None),  # cut by the budget
        ("hermes", '<tool_call>{"name": "calculator"', True, "a call is"),
        ("hermes", "<tool_call>{oops}</tool_call>", True, "invalid JSON"),
        ("hermes", '<tool_call>{"name": "c", "arguments": 3}</tool_call>', True, "a call is"),
        (
            "llama3",
            '{"name": "calculator", "parameters": {"expression": "2*3"}}',
            True,
            ToolCall("calculator", {"expression": "2*3"}),
        ),
        ("llama3", "The answer is 6.", True, None),
        ("llama3", '{"name": "calculator", "parameters": ', True, "invalid JSON"),
    ],
)
def test_calls_in_a_family_s_format(family, turn, ended, call):
    got = ChatProtocol(family).call_in(turn, ended)
    assert got == call if not isinstance(call, str) else got.startswith(call)


def rendered(tok, messages: list[dict], box: Toolbox, generation_prompt: bool) -> list[int]:
    return tok.apply_chat_template(
        messages,
        tools=box.schemas,
        add_generation_prompt=generation_prompt,
        tokenize=True,
        return_dict=False,
    )


def _turn(tok, box: Toolbox, text: str) -> tuple[list[int], list[int]]:
    """The episode's tokens after the model wrote ``text`` (its sampled tokens: the text
    tokenized on its own, then EOS), and the answer appended after it."""
    prompt = rendered(tok, box.messages, box, True)
    sampled = tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
    box.messages.append({"role": "assistant", "content": text})
    observation = Observation("6", "calculator")
    answer = box.protocol.answer_ids(
        tok, box.messages, box.schemas, observation, [tok.eos_token_id]
    )
    return prompt + sampled, answer


@pytest.mark.parametrize(
    ("name", "family", "text"),
    [
        (
            "qwen2_5",
            "hermes",
            '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2*3"}}\n</tool_call>',
        ),
        ("llama3_2", "llama3", '{"name": "calculator", "parameters": {"expression": "2*3"}}'),
    ],
)
def test_an_append_only_template_s_tool_message_is_its_token_difference(name, family, text):
    tok = tokenizer(name)
    messages = [{"role": "user", "content": "What is 2*3?"}]
    box = Toolbox([calculator], protocol=ChatProtocol(family), messages=list(messages))
    episode, answer = _turn(tok, box, text)
    whole = rendered(
        tok,
        [*messages, {"role": "assistant", "content": text}, {"role": "tool", "content": "6"}],
        box,
        True,
    )
    # the episode so far, then the answer: the template's rendering of the conversation
    assert episode + answer == whole
    assert "6" in tok.decode(answer) and tok.decode(answer).endswith(
        "<|im_start|>assistant\n" if family == "hermes" else "<|end_header_id|>\n\n"
    )


def test_a_template_that_rewrites_earlier_turns_leaves_the_sampled_tokens_alone():
    tok = tokenizer("qwen3")
    messages = [{"role": "user", "content": "What is 2*3?"}]
    box = Toolbox([calculator], protocol=ChatProtocol("hermes"), messages=list(messages))
    text = (
        '<think>multiply</think><tool_call>\n{"name": "calculator", "arguments": '
        '{"expression": "2*3"}}\n</tool_call>'
    )
    episode, answer = _turn(tok, box, text)
    again = rendered(
        tok,
        [*messages, {"role": "assistant", "content": text}, {"role": "tool", "content": "6"}],
        box,
        True,
    )
    # Qwen3 renders the turn as "<think>\nmultiply\n</think>\n\n<tool_call>...": re-tokenizing
    # the conversation would train on tokens the model never sampled
    assert again[: len(episode)] != episode
    assert tok.decode(answer) == (
        "\n<|im_start|>user\n<tool_response>\n6\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_template_that_drops_earlier_thinking_gets_the_one_call_suffix():
    # Qwen2.5's template made to drop a turn's <think> once another message follows it (the
    # pattern of verl #6501): the conversation so far is not a prefix of it with the answer
    tok = tokenizer("qwen2_5")
    tok.chat_template = tok.chat_template.replace(
        "message.content + '<|im_end|>'",
        "(message.content if loop.last else message.content.split('</think>')[-1]) + '<|im_end|>'",
    )
    messages = [{"role": "user", "content": "What is 2*3?"}]
    box = Toolbox([calculator], protocol=ChatProtocol("hermes"), messages=list(messages))
    text = '<think>multiply</think><tool_call>\n{"name": "calculator"}\n</tool_call>'
    so_far = rendered(tok, [*messages, {"role": "assistant", "content": text}], box, False)
    with_answer = rendered(
        tok,
        [*messages, {"role": "assistant", "content": text}, {"role": "tool", "content": "6"}],
        box,
        True,
    )
    assert with_answer[: len(so_far)] != so_far
    _, answer = _turn(tok, box, text)
    assert tok.decode(answer) == (
        "\n<|im_start|>user\n<tool_response>\n6\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_result_holds_the_tokens_the_model_writes_when_it_copies_it():
    tok = load_tokenizer("bundled")
    whole = tok("<result>-4172</result>", add_special_tokens=False)["input_ids"]
    alone = tok("-4172", add_special_tokens=False)["input_ids"]  # as after <answer>
    ids = result_ids(tok, "-4172")
    assert tok.decode(ids) == "<result>-4172</result>"
    assert whole != ids  # the bundled tokenizer merges ">-" across the tag
    start = len(tok("<result>", add_special_tokens=False)["input_ids"])
    assert ids[start : start + len(alone)] == alone
    box = Toolbox([calculator])
    observation = box.call(ToolCall("calculator", "1-4173"))
    assert TagProtocol().answer_ids(tok, [], [], observation, [tok.eos_token_id]) == ids
