"""A value model (critic) for PPO: a causal LM's decoder with a scalar head on every position.

Saved as the decoder in HF format plus ``value_head.pt``, so a critic checkpoint can be
reloaded with :meth:`ValueModel.from_pretrained`, or started from any causal LM (the policy's
own checkpoint by default) with a freshly initialised head. A reward model that also reads its
own language model's likelihood keeps the causal LM's output layer as ``lm_head`` (saved as
``lm_head.pt`` only where it is not the input embedding, as tied models share it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM

from reasonrl.distributed import Ranks
from reasonrl.models.forward import pack_batch, position_ids
from reasonrl.models.loading import save_torch

HEAD_FILE = "value_head.pt"
LM_HEAD_FILE = "lm_head.pt"


class ValueModel(torch.nn.Module):
    def __init__(self, decoder: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.decoder = decoder
        self.head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.lm_head: torch.nn.Module | None = None

    @classmethod
    def from_pretrained(
        cls, path: str, dtype: torch.dtype = torch.float32, lm_head: bool = False
    ) -> ValueModel:
        """A critic from a saved ValueModel, or from a causal LM's decoder with a new head.
        ``lm_head``: keep the causal LM's output layer as well (``model.lm_head``)."""
        head_path = Path(path) / HEAD_FILE
        if head_path.is_file():
            decoder = AutoModel.from_pretrained(path, dtype=dtype)
            # the head in ``dtype`` before loading: a float32 head would round a float64 one
            model = cls(decoder, decoder.config.hidden_size).to(dtype)
            model.head.load_state_dict(torch.load(head_path, weights_only=True))
            if lm_head:
                model.lm_head = _saved_lm_head(Path(path), decoder)
            return model.to(dtype)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model = cls(lm.get_decoder(), lm.config.hidden_size)
        if lm_head:
            model.lm_head = lm.get_output_embeddings()
        return model.to(dtype)

    def lm_head_is_tied(self) -> bool:
        """Whether ``lm_head`` is the decoder's input embedding (then it is saved with it)."""
        embedding = self.decoder.get_input_embeddings()
        return self.lm_head is not None and self.lm_head.weight is embedding.weight

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None) -> None:
        """The decoder in HF format, the head (and an untied ``lm_head``) beside it.
        ``state_dict``: this model's whole state to write instead of its own (gathered from
        the ranks' shards by ``reasonrl.distributed.full_model_state``)."""
        state = self.state_dict() if state_dict is None else state_dict
        part = lambda name: {  # noqa: E731
            k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")
        }
        self.decoder.save_pretrained(path, state_dict=part("decoder"))
        save_torch(part("head"), Path(path) / HEAD_FILE)
        if self.lm_head is not None and not self.lm_head_is_tied():
            save_torch(part("lm_head"), Path(path) / LM_HEAD_FILE)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Values of every position. input_ids, attention_mask, position_ids: [B, L] → [B, L];
        no ``attention_mask``: packed rows (positions restart at each sequence)."""
        hidden = self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        return self.head(hidden).squeeze(-1).float()


def completion_values(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    pack_tokens: int = 0,
    ranks: Ranks = Ranks(),
) -> torch.Tensor:
    """V before each completion token of a ``[prompt, left-padded | completion, right-padded]``
    batch [B, L] → [B, C], from ``model``, a ValueModel or its wrapper (DDP, FSDP2: each forward
    goes through it, so its hooks see every one). ``pack_tokens`` > 0: on packed rows without
    padding (reasonrl.models.forward), 0 where masked; with several ``ranks`` every rank calls
    it together and runs as many forwards."""
    if not pack_tokens:
        values = model(input_ids, attention_mask, position_ids(attention_mask))
        return values[:, -completion_len - 1 : -1]
    packed = pack_batch(input_ids, attention_mask, completion_len, pack_tokens).even(ranks)
    # no attention mask: the model builds the block-diagonal one from the restarting positions
    rows = [model(row.ids[None], None, row.positions[None])[0, row.keep] for row in packed.rows]
    return packed.unpack(rows)


def _saved_lm_head(path: Path, decoder: torch.nn.Module) -> torch.nn.Linear:
    """The output layer saved beside a ValueModel: ``lm_head.pt``, or else the decoder's input
    embedding where the model ties the two."""
    embedding = decoder.get_input_embeddings()
    vocab, hidden = embedding.weight.shape
    layer = torch.nn.Linear(hidden, vocab, bias=False)
    if (path / LM_HEAD_FILE).is_file():
        layer.load_state_dict(torch.load(path / LM_HEAD_FILE, weights_only=True))
    elif getattr(decoder.config, "tie_word_embeddings", False):
        layer.weight = embedding.weight
    else:
        raise FileNotFoundError(f"{path / LM_HEAD_FILE} (the untied output layer) is missing")
    return layer
