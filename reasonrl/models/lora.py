"""Low-rank adapters (peft) for every training stage: SFT, reward model, DPO and RL; and
activation checkpointing, the other way to fit a bigger model.

Set ``model.lora`` in a recipe (``model.lora={r: 16, alpha: 32}`` on the command line). Only the
adapters train; the optimizer holds their state alone. The frozen reference that RL's KL and DPO
need is the same model with its adapters disabled — the weights the stage started from — so no
second copy of the weights is ever made. Checkpoints hold the adapter (peft's
``adapter_config.json`` + ``adapter_model.safetensors``) and resume reloads base + adapter. The
stage's ``model/`` is the merged model or the adapter alone (``lora.save``); an adapter directory
names its base model and loads wherever a model path is accepted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from reasonrl.config import LoRAConfig, ModelConfig
from reasonrl.models.loading import load_model, resolve_model_path

ADAPTER_CONFIG = "adapter_config.json"


def apply_lora(
    model: torch.nn.Module,
    lora: LoRAConfig,
    adapter_dir: Path | None = None,
    task_type: str | None = "CAUSAL_LM",
) -> PeftModel:
    """``model`` with new adapters shaped by ``lora`` (B = 0, so it computes what ``model``
    did), or with the trained adapters saved in ``adapter_dir`` (a checkpoint, to resume).
    Only adapter parameters require grad. ``task_type`` None: a bare decoder (a reward model's)."""
    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
    )
    return get_peft_model(model, config)


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each layer's activations in backward instead of keeping them (non-reentrant,
    so it works with frozen base weights under LoRA). ``model.gradient_checkpointing``."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the new name)
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_lora(model: torch.nn.Module) -> bool:
    return isinstance(model, PeftModel)


@contextmanager
def reference_model(
    policy: torch.nn.Module, ref_model: torch.nn.Module | None = None
) -> Iterator[torch.nn.Module | None]:
    """The frozen reference policy: ``ref_model`` when there is one, else a LoRA ``policy``
    with its adapters disabled inside the block (the weights it started from), else None."""
    if ref_model is not None:
        yield ref_model
    elif is_lora(policy):
        with policy.disable_adapter():
            yield policy
    else:
        yield None


def load_base(cfg: ModelConfig, device: torch.device | None = None) -> torch.nn.Module:
    """The model at ``cfg.path`` as plain weights (copied out of the checkpoint file, as by
    :func:`load_model`): an adapter directory is loaded onto its base model (itself possibly an
    adapter) and merged into it."""
    path = resolve_model_path(cfg.path)
    adapter_config = Path(path) / ADAPTER_CONFIG
    if adapter_config.is_file():
        base_path = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        base = load_base(cfg.model_copy(update={"path": base_path}), device)
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
        model.name_or_path = path  # what an adapter trained on top names as its base
    else:
        model = load_model(cfg, device)
    return model


@torch.no_grad()
def merged_weights(model: PeftModel, adapted_only: bool = False) -> dict[str, torch.Tensor]:
    """The plain model's weights, under its own names, with the adapters merged: each adapted
    layer's W + ΔW is computed beside the trained weights, which are left as they are (peft's
    merge then unmerge would leave rounding in W). ``adapted_only``: the adapted layers alone,
    the weights that change as the adapters train."""
    base = model.get_base_model()
    merged = {
        f"{name}.weight": module.get_base_layer().weight
        + sum(module.get_delta_weight(a) for a in module.active_adapters)
        for name, module in base.named_modules()
        if isinstance(module, LoraLayer)
    }
    if adapted_only:
        return merged
    plain = {
        k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k
    }
    return {**plain, **merged}


def save_model(model: torch.nn.Module, tokenizer: Any, path: Path, lora: LoRAConfig | None) -> None:
    """Write a stage's final model to ``path``: a LoRA model merged into plain weights (the
    trained model is left as it was, to keep training) or as the adapter alone, per
    ``lora.save``."""
    if is_lora(model) and lora is not None and lora.save == "merged":
        model.get_base_model().save_pretrained(path, state_dict=merged_weights(model))
    else:
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
