"""A value model (critic) for PPO: a causal LM's decoder with a scalar head on every position.

Saved as the decoder in HF format plus ``value_head.pt``, so a critic checkpoint can be
reloaded with :meth:`ValueModel.from_pretrained`, or started from any causal LM (the policy's
own checkpoint by default) with a freshly initialised head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM

HEAD_FILE = "value_head.pt"


class ValueModel(torch.nn.Module):
    def __init__(self, decoder: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.decoder = decoder
        self.head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype = torch.float32) -> ValueModel:
        """A critic from a saved ValueModel, or from a causal LM's decoder with a new head."""
        head_path = Path(path) / HEAD_FILE
        if head_path.is_file():
            decoder = AutoModel.from_pretrained(path, dtype=dtype)
            model = cls(decoder, decoder.config.hidden_size)
            model.head.load_state_dict(torch.load(head_path, weights_only=True))
            return model.to(dtype)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return cls(lm.get_decoder(), lm.config.hidden_size).to(dtype)

    def save_pretrained(self, path: str | Path) -> None:
        self.decoder.save_pretrained(path)
        torch.save(self.head.state_dict(), Path(path) / HEAD_FILE)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Values of every position. input_ids, attention_mask, position_ids: [B, L] → [B, L]."""
        hidden = self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        return self.head(hidden).squeeze(-1).float()
