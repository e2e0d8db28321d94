from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from reasonrl import testing
from reasonrl.models import load_tokenizer


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


@pytest.fixture(scope="session")
def tool_scripts() -> dict[str, str]:
    """Prompts and the completions ``tool_model`` writes."""
    return testing.SCRIPTS


@pytest.fixture(scope="session")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``reasonrl.testing.tool_model`` (the bundled tokenizer): the tool
    loop runs on real ``generate`` calls."""
    tok = load_tokenizer("bundled")
    model = testing.tool_model(tok)
    path = tmp_path_factory.mktemp("tool-model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def chat_tool_model() -> tuple:
    """Qwen3's template (TRL ships it) on the bundled tokenizer, the episode prompt of "What is
    12 + 30?" with the calculator and ``testing.Hint``, and a tiny model fit to call the
    calculator in the Hermes format (``testing.CHAT_CALL``), read the template's tool message
    and answer: (model, tokenizer, ToolUse, TaskConfig)."""
    from importlib.resources import files

    from reasonrl.config import TaskConfig
    from reasonrl.envs import ToolUse, calculator
    from reasonrl.tasks import Sample

    tok = load_tokenizer("bundled")
    tok.chat_template = (files("trl") / "chat_templates" / "qwen3.jinja").read_text()
    use = ToolUse([calculator], testing.Hint, 512)
    task = TaskConfig(chat_template="on")
    (prompt,), _ = use.episodes([Sample("What is 12 + 30?", "42")], tok, task)
    completion = testing.CHAT_CALL + tok.eos_token + testing.CHAT_ANSWER + "<answer>42</answer>"
    model = testing.fit_to_texts(tok, [prompt], [completion], steps=200, max_positions=2048)
    return model, tok, use, task
