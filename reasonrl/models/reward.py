"""Reward models: a sequence's score, read at its last position.

Two heads (``rm.head``): ``value`` is a causal LM's decoder with a scalar head
(:class:`reasonrl.models.value.ValueModel`, saved as the decoder plus ``value_head.pt``);
``classification`` is ``AutoModelForSequenceClassification`` with one label, saved as an
ordinary ``*ForSequenceClassification`` checkpoint that other libraries load as they are.
Either starts from any causal LM checkpoint with a new head. Batches are left-padded, so the
last column is every sequence's last token (its EOS, as the pairs are encoded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from reasonrl.config import ConfigError
from reasonrl.models.loading import pick_device, resolve_model_path
from reasonrl.models.value import HEAD_FILE, ValueModel
from reasonrl.train.forward import position_ids

HEADS = ("value", "classification")


class RewardModel(torch.nn.Module):
    """A scalar score per left-padded sequence, from either head."""

    def __init__(self, model: torch.nn.Module, head: str) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores at the last position. input_ids, attention_mask: [B, L] → [B] float32."""
        positions = position_ids(attention_mask)
        if self.head == "value":
            return self.model(input_ids, attention_mask, positions)[:, -1]
        # The decoder and the score layer directly: HF's own pooling looks for the last
        # non-pad token, which skips the EOS wherever the pad token is the EOS token.
        decoder = getattr(self.model, self.model.base_model_prefix)
        hidden = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=False,
        ).last_hidden_state
        return self.model.score(hidden[:, -1]).squeeze(-1).float()

    def save_pretrained(self, path: str | Path) -> None:
        """HF format: the decoder and value_head.pt, or a *ForSequenceClassification model."""
        self.model.save_pretrained(path)


def saved_head(path: str) -> str | None:
    """The head of the reward model saved at ``path``; None for a plain causal LM."""
    if (Path(path) / HEAD_FILE).is_file():
        return "value"
    architectures = AutoConfig.from_pretrained(path).architectures or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "classification"
    return None


def load_reward_model(
    path: str,
    head: str | None = None,
    dtype: str = "float32",
    device: torch.device | str | None = None,
) -> RewardModel:
    """A saved reward model (its head detected), or a new one from a causal LM checkpoint with
    ``head`` ("value" or "classification") freshly initialised. ``path``: "bundled", a local
    directory or a hub id; ``device`` None picks CUDA when available."""
    if head not in (None, *HEADS):
        raise ConfigError(f"unknown reward-model head {head!r} (one of {HEADS})")
    path = resolve_model_path(path)
    found = saved_head(path)
    if head is None and found is None:
        raise ConfigError(
            f"{path} is not a saved reward model (no {HEAD_FILE}, not *ForSequenceClassification):"
            " pass a head ('value' or 'classification') to start one from this causal LM"
        )
    if head is not None and found is not None and head != found:
        raise ConfigError(f"{path} holds a reward model with a {found!r} head, not {head!r}")
    head = head or found
    torch_dtype = getattr(torch, dtype)
    if head == "value":
        model: torch.nn.Module = ValueModel.from_pretrained(path, torch_dtype)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch_dtype
        )
        if model.config.pad_token_id is None:  # HF's own forward needs one for batches
            model.config.pad_token_id = model.config.eos_token_id
    # transformers maps safetensors files into memory: a frozen reward model (the verifier's)
    # would change if its directory were rewritten during a run, so copy the weights out.
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    return RewardModel(model, head).to(device or pick_device("auto"))


def pad_left(
    prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prompt + response as one left-padded row: (input_ids [B, L], attention_mask [B, L])."""
    rows = [p + r for p, r in zip(prompts, responses, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask
