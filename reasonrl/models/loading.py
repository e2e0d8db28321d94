"""Loading any Hugging Face causal LM (local path or hub id), and the bundled tiny model."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from reasonrl.config import ConfigError, ModelConfig, ModelInit, looks_local

BUNDLED = "bundled"
# The packaged checkpoints, by the name a recipe or `--model` gives them: the tiny model, and
# the same model after the tool-use recipe (recipes/tool-use.yaml), which calls a calculator.
BUNDLED_MODELS = {BUNDLED: "tiny-arith", "bundled-tool-use": "tiny-arith-tool-use"}


def bundled_model_dir(name: str = BUNDLED) -> Path:
    """Where a packaged checkpoint lives (weights, config, tokenizer)."""
    return Path(str(resources.files("reasonrl") / "assets" / BUNDLED_MODELS[name]))


_INDEX_SUFFIX = ".safetensors.index.json"


def _safetensors_problem(file: Path) -> str | None:
    """What is wrong with a safetensors file, read from its header alone (None: nothing seen).

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's
    ``data_offsets`` in the data that follows, and that data: a file cut short (an interrupted
    copy or download) ends before the last offset, which the header says without reading the
    weights."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            return f"truncated or not safetensors ({size} bytes, header of {max(n, 0)} bytes)"
        try:
            header = json.loads(f.read(n))
            ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "corrupt header (not safetensors JSON)"
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        state = "truncated" if size < expected else "corrupt"
        return f"{state}: {size} bytes where its header needs {expected}"
    return None


def check_safetensors(model_dir: Path) -> None:
    """A ConfigError naming the file if a ``*.safetensors`` file in ``model_dir`` is truncated
    or corrupt, or a shard that a ``*.safetensors.index.json`` lists is missing; cheap (headers
    only), so it runs before anything slow instead of failing halfway through a load."""
    for index in sorted(model_dir.glob(f"*{_INDEX_SUFFIX}")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{index}: not a safetensors index (no weight_map)") from None
        missing = sorted(s for s in shards if not (model_dir / s).is_file())
        if missing:
            raise ConfigError(
                f"{index} lists shards that are missing: {missing}; copy the whole model "
                "directory again"
            )
    for file in sorted(model_dir.glob("*.safetensors")):
        problem = _safetensors_problem(file)
        if problem is not None:
            raise ConfigError(
                f"{file}: {problem}; copy or save the model again (the file is damaged)"
            )


def resolve_model_path(path: str) -> str:
    """A local directory as a string, or a hub id; a missing local path, or a local model
    whose weight files are damaged (:func:`check_safetensors`), raises ConfigError."""
    if path in BUNDLED_MODELS:
        where = str(bundled_model_dir(path))
        if not Path(where).is_dir():
            raise ConfigError(f"the {path} model is missing from the package: {where}")
        return where
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"model path is not a directory: {p}")
        if not any((p / name).is_file() for name in ("config.json", "adapter_config.json")):
            raise ConfigError(
                f"{p} holds no model: no config.json (nor a LoRA adapter's adapter_config.json)"
            )
        check_safetensors(p)
        return str(p)
    if looks_local(path):  # a hub id is "name" or "org/name"
        raise ConfigError(f"model path not found: {p}")
    return path


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device=cuda but no CUDA device is available")
    return torch.device(device)


def load_tokenizer(path: str) -> Any:
    """The model's tokenizer, left-padded for generation, with a pad token."""
    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(path))
    except OSError as e:
        raise ConfigError(f"could not load a tokenizer from {path!r}: {e}") from e
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file: a full disk then raises OSError(ENOSPC) naming the
    file, which the run turns into its one-line message; torch's own writer raises a bare
    RuntimeError."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def copy_out_of_file(model: torch.nn.Module) -> torch.nn.Module:
    """Give ``model``'s CPU tensors memory of their own (in place; returns the model).

    transformers maps safetensors files into memory, so weights that are never written (a LoRA
    base, a frozen reference or reward model, an evaluated model) would change if the file were
    rewritten in place while they are in use (``cp`` over a model directory does that)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu":  # on an accelerator it is a copy already
                tensor.data = tensor.data.clone()
    return model


def load_model(cfg: ModelConfig, device: torch.device | None = None) -> torch.nn.Module:
    """The causal LM named by ``cfg`` in the configured dtype, on ``device``, its weights
    copied out of the checkpoint file (:func:`copy_out_of_file`)."""
    dtype = getattr(torch, cfg.dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.path), dtype=dtype)
    except OSError as e:
        raise ConfigError(f"could not load a model from {cfg.path!r}: {e}") from e
    return copy_out_of_file(model.to(device or pick_device(cfg.device)))


def init_model(init: ModelInit, tokenizer: Any, dtype: str = "float32") -> torch.nn.Module:
    """A randomly initialised Qwen2 causal LM sized by ``init`` for ``tokenizer``'s vocabulary."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=init.hidden_size,
        intermediate_size=init.intermediate_size,
        num_hidden_layers=init.num_layers,
        num_attention_heads=init.num_heads,
        num_key_value_heads=init.num_kv_heads,
        max_position_embeddings=init.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=dtype,
    )
    return Qwen2ForCausalLM(config).to(getattr(torch, dtype))
