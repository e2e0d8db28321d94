"""The ``hf`` engine: transformers ``generate`` on the policy being trained.

Works for any causal LM transformers can load, on CPU or GPU. It shares the policy's weights
(no copy, no sync). The fast GPU path is a separate engine with the same interface. Unseeded,
``generate`` samples with transformers' warpers and the global RNG; with per-completion seeds it
decodes greedily over scores where ``SeededDraw`` has left only the seeded draw of
``reasonrl.rollout.sampling`` (the fast engine's rule), so both engines draw the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from reasonrl.algos import token_logprobs
from reasonrl.rollout.base import Rollout, concat_rollouts, stop_and_pad_ids
from reasonrl.rollout.sampling import sample_tokens, seed_tensor


def completion_mask(ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 on tokens up to and including the first EOS of each row. ids: [B, C] → [B, C] long."""
    is_eos = torch.isin(ids, torch.tensor(eos_ids, device=ids.device)).long()
    eos_before = is_eos.cumsum(-1) - is_eos
    return (eos_before == 0).long()


class SeededDraw(LogitsProcessor):
    """Draws each row's token with ``sample_tokens`` from the row's seed and leaves it the only
    finite score, so that greedy ``generate`` emits exactly the seeded sample. ``generate``
    passes the raw logits it returns with ``output_logits`` and does not see this change."""

    def __init__(
        self, seeds: torch.Tensor, prompt_len: int, temperature: float, top_p: float, top_k: int
    ):
        self.seeds, self.prompt_len = seeds, prompt_len
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # Every row's prompt is left-padded to prompt_len: the token drawn has this index.
        position = input_ids.shape[1] - self.prompt_len
        ids, _ = sample_tokens(
            scores, self.temperature, self.top_p, self.top_k, seeds=self.seeds, position=position
        )
        return torch.full_like(scores, float("-inf")).scatter_(1, ids.unsqueeze(-1), 0.0)


class HFEngine:
    """Rollouts from ``model.generate`` in chunks of at most ``batch_completions`` sequences."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_completions: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_completions = batch_completions
        self.eos_ids, self.pad_id = stop_and_pad_ids(model, tokenizer)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> Rollout:
        """Complete each prompt; with ``seeds`` (one per prompt), prompt i's completion is drawn
        from seeds[i] alone (see ``reasonrl.rollout.sampling``)."""
        device = next(self.model.parameters()).device
        row_seeds = None if seeds is None else seed_tensor(seeds, len(prompts), device)
        parts = [
            self._generate_chunk(
                prompts[i : i + self.batch_completions],
                max_new_tokens,
                temperature,
                top_p,
                top_k,
                greedy,
                None if row_seeds is None else row_seeds[i : i + self.batch_completions],
            )
            for i in range(0, len(prompts), self.batch_completions)
        ]
        return concat_rollouts(parts, self.pad_id)

    def _generate_chunk(
        self,
        prompts: list[str],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        greedy: bool,
        seeds: torch.Tensor | None,
    ) -> Rollout:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        ).to(device)
        prompt_len = enc["input_ids"].shape[1]
        off: dict[str, Any] = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        if greedy:
            sampling = off
        elif seeds is None:
            sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
        else:  # greedy decoding of scores where only the seeded draw is finite
            draw = SeededDraw(seeds, prompt_len, temperature, top_p, top_k)
            sampling = off | {"logits_processor": LogitsProcessorList([draw])}
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                return_dict_in_generate=True,
                output_logits=True,
                **sampling,
            )
        finally:
            self.model.train(was_training)
        ids = out.sequences[:, prompt_len:]
        mask = completion_mask(ids, self.eos_ids)
        logits = torch.stack(out.logits, dim=1)  # raw, before temperature and filtering
        logp = token_logprobs(logits, ids, 1.0 if greedy else temperature) * mask
        texts = self.tokenizer.batch_decode(
            ids * mask + self.pad_id * (1 - mask), skip_special_tokens=True
        )
        finished = torch.isin(ids, torch.tensor(self.eos_ids, device=ids.device)).any(-1)
        return Rollout(enc["input_ids"], enc["attention_mask"], ids, mask, logp, texts, finished)
