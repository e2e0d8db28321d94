"""The ``hf`` engine: transformers ``generate`` on the policy being trained.

Works for any causal LM transformers can load, on CPU or GPU. It shares the policy's weights
(no copy, no sync). The fast GPU path is a separate engine with the same interface. Unseeded,
``generate`` samples with transformers' warpers and the global RNG; with per-completion seeds it
decodes greedily over scores where ``SeededDraw`` has left only the seeded draw of
``reasonrl.rollout.sampling`` (the fast engine's rule), so both engines draw the same tokens.

Episodes (``max_turns`` > 1, a toolbox per completion): each turn is one ``generate`` call on
the rows still going, fed their whole context as tokens; a turn ends at EOS or, in the tag
protocol, at a tool call's closing tag (``reasonrl.envs.protocol``; a chat model's own format
ends every turn at EOS), and the tool's answer is appended as environment tokens (the chat
template's tool message for a chat model). Each turn re-prefills its context (no KV cache kept
between turns).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria

from reasonrl.algos import token_logprobs
from reasonrl.envs.tools import Toolbox
from reasonrl.rollout.base import Rollout, concat_rollouts, stop_and_pad_ids
from reasonrl.rollout.episodes import run_turns
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


class StopAtText(StoppingCriteria):
    """Ends a row once the text it generated holds ``text`` (a tool call's closing tag): looks
    at the last ``len(text)`` tokens only, since every token holds at least one of its bytes."""

    def __init__(self, tokenizer: Any, text: str) -> None:
        self.tokenizer, self.text = tokenizer, text

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        tails = self.tokenizer.batch_decode(input_ids[:, -len(self.text) :])
        return torch.tensor([self.text in t for t in tails], device=input_ids.device)


class Draw(NamedTuple):
    """How an episode's turns are drawn: the token budget of the whole completion and the
    sampling settings."""

    budget: int
    temperature: float
    top_p: float
    top_k: int
    greedy: bool


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
        toolboxes: Sequence[Toolbox] | None = None,
        max_turns: int = 1,
    ) -> Rollout:
        """Complete each prompt; with ``seeds`` (one per prompt), prompt i's completion is drawn
        from seeds[i] alone (see ``reasonrl.rollout.sampling``). With ``toolboxes`` and
        ``max_turns`` > 1, each completion is an episode (:meth:`_episodes`)."""
        device = next(self.model.parameters()).device
        row_seeds = None if seeds is None else seed_tensor(seeds, len(prompts), device)
        if toolboxes is not None and max_turns > 1:
            n, step = len(prompts), self.batch_completions
            return concat_rollouts(
                [
                    self._episodes(
                        prompts[i : i + step],
                        toolboxes[i : i + step],
                        max_turns,
                        Draw(max_new_tokens, temperature, top_p, top_k, greedy),
                        None if seeds is None else list(seeds[i : i + step]),
                    )
                    for i in range(0, n, step)
                ],
                self.pad_id,
            )
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

    def _episodes(
        self,
        prompts: list[str],
        toolboxes: Sequence[Toolbox],
        max_turns: int,
        draw: Draw,
        seeds: list[int] | None,
    ) -> Rollout:
        """Episodes by ``run_turns`` (its docstring has the rules), a ``generate`` call per
        turn; a turn counts sampling positions from its own start."""
        tok = self.tokenizer
        rec = run_turns(
            lambda contexts, room, turn_seeds, stop: self._turn(
                contexts, room, draw, turn_seeds, stop
            ),
            tok,
            self.eos_ids,
            tok(prompts, add_special_tokens=False)["input_ids"],
            toolboxes,
            max_turns,
            draw.budget,
            seeds,
        )
        device = next(self.model.parameters()).device
        enc = tok(
            prompts,
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        )
        return rec.rollout(
            enc["input_ids"].to(device), enc["attention_mask"].to(device), tok, self.pad_id, device
        )

    def _turn(
        self,
        contexts: list[list[int]],
        room: list[int],
        draw: Draw,
        seeds: list[int] | None,
        stop: str | None,
    ) -> tuple[list[list[int]], list[list[float]]]:
        """One turn of each row: ``generate`` on the left-padded contexts until EOS, the text
        ``stop`` (the tag protocol's closing tag; None: EOS alone) or the row's ``room``; each
        row's tokens up to and including that end, and their log-probs."""
        device = next(self.model.parameters()).device
        width = max(len(c) for c in contexts)
        input_ids = torch.tensor(
            [[self.pad_id] * (width - len(c)) + c for c in contexts], device=device
        )
        attention = torch.tensor(
            [[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device
        )
        row_seeds = None if seeds is None else seed_tensor(seeds, len(contexts), device)
        out_ids, logp = self._generate(
            {"input_ids": input_ids, "attention_mask": attention},
            max(room),
            draw.temperature,
            draw.top_p,
            draw.top_k,
            draw.greedy,
            row_seeds,
            [StopAtText(self.tokenizer, stop)] if stop else None,
        )
        tokens, logps = [], []
        for row, lp, limit in zip(out_ids.tolist(), logp.tolist(), room, strict=True):
            end = min(limit, len(row))
            eos = next((k for k, t in enumerate(row[:end]) if t in self.eos_ids), None)
            end = end if eos is None else eos + 1
            if stop and stop in self.tokenizer.decode(row[:end]):
                lo, hi = 1, end  # the shortest prefix holding the whole tag
                while lo < hi:
                    mid = (lo + hi) // 2
                    lo, hi = (
                        (lo, mid) if stop in self.tokenizer.decode(row[:mid]) else (mid + 1, hi)
                    )
                end = lo
            tokens.append(row[:end])
            logps.append(lp[:end])
        return tokens, logps

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
        ids, logp = self._generate(enc, max_new_tokens, temperature, top_p, top_k, greedy, seeds)
        mask = completion_mask(ids, self.eos_ids)
        logp = logp * mask
        texts = self.tokenizer.batch_decode(
            ids * mask + self.pad_id * (1 - mask), skip_special_tokens=True
        )
        finished = torch.isin(ids, torch.tensor(self.eos_ids, device=ids.device)).any(-1)
        return Rollout(enc["input_ids"], enc["attention_mask"], ids, mask, logp, texts, finished)

    def _generate(
        self,
        enc: Any,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        greedy: bool,
        seeds: torch.Tensor | None,
        stopping: list[StoppingCriteria] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``generate`` on a left-padded batch: the new tokens [B, T] (pad after a row's end)
        and each one's log-prob [B, T] (unmasked)."""
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
                stopping_criteria=stopping,
                **sampling,
            )
        finally:
            self.model.train(was_training)
        ids = out.sequences[:, prompt_len:]
        logits = torch.stack(out.logits, dim=1)  # raw, before temperature and filtering
        return ids, token_logprobs(logits, ids, 1.0 if greedy else temperature)
