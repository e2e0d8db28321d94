import json

import pytest
import torch

from reasonrl.config import ConfigError, ModelConfig, ModelInit
from reasonrl.models import (
    bundled_model_dir,
    init_model,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from reasonrl.models.tokenizer import train_tokenizer


def test_missing_model_path_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="no-such-model"):
        resolve_model_path(str(tmp_path / "no-such-model"))
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # a hub id passes through


def test_a_directory_without_a_model_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ConfigError, match="holds no model: no config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ConfigError, match="holds no model"):
        load_tokenizer(str(tmp_path))


def test_bundled_model_is_small_and_loads_in_hf_format():
    files = {p.name: p.stat().st_size for p in bundled_model_dir().iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert sum(files.values()) <= 20 * 2**20
    model = load_model(ModelConfig(path="bundled", device="cpu", dtype="bfloat16"))
    assert model.config.model_type == "qwen2"
    assert next(model.parameters()).dtype == torch.bfloat16
    tok = load_tokenizer("bundled")
    assert tok.chat_template and tok.padding_side == "left"


def test_tokenizer_splits_digits_and_round_trips():
    tok = train_tokenizer(["12 + 345 = 357", "<think>1+2=3</think> <answer>3</answer>"] * 10, 300)
    ids = tok("<think>907-58=849</think>", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert (
        pieces[0] == "<think>"
        and "9" in pieces
        and "849" not in "".join(p for p in pieces if len(p) > 1)
    )
    assert tok.decode(ids) == "<think>907-58=849</think>"


def test_saved_model_loads_from_a_local_directory(tmp_path):
    tok = train_tokenizer(["1 + 2 = 3"] * 10, 280)
    model = init_model(
        ModelInit(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32),
        tok,
    )
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again = load_model(ModelConfig(path=str(tmp_path), device="cpu"))
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    assert load_tokenizer(str(tmp_path)).encode("1 + 2") == tok.encode("1 + 2")


@pytest.fixture
def saved_tiny(tmp_path, tiny_qwen):
    path = tmp_path / "tiny"
    tiny_qwen.save_pretrained(path)
    return path


def test_a_truncated_safetensors_file_is_named_before_loading(saved_tiny):
    weights = saved_tiny / "model.safetensors"
    data = weights.read_bytes()
    assert resolve_model_path(str(saved_tiny)) == str(saved_tiny)
    weights.write_bytes(data[: len(data) - 100])  # an interrupted copy
    with pytest.raises(ConfigError, match=r"model\.safetensors: truncated: .* copy or save"):
        resolve_model_path(str(saved_tiny))
    with pytest.raises(ConfigError, match="truncated"):
        load_model(ModelConfig(path=str(saved_tiny), device="cpu"))
    weights.write_bytes(data[:5])
    with pytest.raises(ConfigError, match="truncated or not safetensors"):
        resolve_model_path(str(saved_tiny))


def test_a_corrupt_safetensors_header_is_named(saved_tiny):
    weights = saved_tiny / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:12] = b"\x00\xff{["  # the JSON header, scrambled
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"model\.safetensors: corrupt header"):
        resolve_model_path(str(saved_tiny))


def test_a_shard_missing_from_the_index_is_named(saved_tiny):
    index = {"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors"}}
    (saved_tiny / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"missing: \['model-00001-of-00002\.safetensors'\]"):
        resolve_model_path(str(saved_tiny))


def test_the_tool_use_model_calls_the_calculator_on_sums_it_cannot_add_by_hand(tmp_path):
    """The packaged checkpoint of recipes/tool-use.yaml, greedy on held-out problems of that
    recipe: it calls the calculator on the 4-digit sums and copies the result into its answer,
    and adds many of the 1-2 digit ones by hand (docs/tools.md has the whole evaluation)."""
    from reasonrl.envs import ToolUse
    from reasonrl.pipeline import load_pipeline
    from reasonrl.rewards.extract import extract_answer
    from reasonrl.rollout import HFEngine
    from reasonrl.tasks import load_splits

    cfg = load_pipeline("tool-use", [], tmp_path)[-1].cfg
    _, held = load_splits(cfg.task)
    tok = load_tokenizer("bundled-tool-use")
    model = load_model(ModelConfig(path="bundled-tool-use", device="cpu"))
    use = ToolUse.from_config(cfg.rollout)
    for difficulty in ("hard", "easy"):
        rows = [s for s in held if s.meta["difficulty"] == difficulty][:16]
        prompts, kwargs = use.generate_args(rows, tok, cfg.task)
        ro = HFEngine(model, tok).generate(prompts, max_new_tokens=96, greedy=True, **kwargs)
        calls = sum(e.calls.get("calculator", 0) for e in ro.episodes)
        right = sum(extract_answer(t) == s.answer for t, s in zip(ro.texts, rows, strict=True))
        if difficulty == "hard":  # the calculator on every one (16 of 16 when packaged)
            assert calls >= 15 and right >= 14, (calls, right)
        else:  # by hand on half (8 of 16), right on 16
            assert calls <= 10 and right >= 14, (calls, right)
