"""The record every rollout engine returns, and the protocol engines follow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from reasonrl.envs.tools import Toolbox


@dataclass(frozen=True)
class Episode:
    """One completion's turns, for logs, metrics and rewards that look at the trajectory.

    turns: (role, text) in order: ``model`` for what the model wrote in a turn, ``tool`` for
    the environment's answer appended after it (``reasonrl.envs.protocol``). calls: tool name
    → calls made; errors: error kind (``reasonrl.envs.ERRORS``) → calls that failed so."""

    turns: list[tuple[str, str]]
    calls: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def model_turns(self) -> int:
        return sum(role == "model" for role, _ in self.turns)

    @property
    def calls_made(self) -> int:
        """Calls of every tool, failed ones included."""
        return sum(self.calls.values())

    @property
    def model_text(self) -> str:
        """What the model wrote, its turns joined without the tools' answers: the text its
        answer is graded on, so that a tool's output is never taken for the model's answer."""
        return "".join(text for role, text in self.turns if role == "model")


@dataclass(frozen=True)
class Rollout:
    """A batch of B completions, laid out ``[prompt, left-padded | completion, right-padded]``.

    prompt_ids, prompt_mask: [B, P]; completion_ids, completion_mask: [B, C], the mask is 1 on
    every token present (what attention sees), up to and including the first EOS;
    logprobs: [B, C] float32, log p of each sampled token under the temperature-scaled
    distribution it was drawn from (0 where ``model_mask`` is 0); texts: the B decoded
    completions (special tokens dropped); finished: [B] bool, True where the completion ended
    with EOS, False where it was cut (``max_new_tokens``, or an episode's last turn).

    model_mask: [B, C], 1 on the tokens the model sampled, 0 on padding and on environment
    tokens (a tool's answer appended inside a multi-turn episode): the tokens every loss, KL,
    entropy, length and token-mean normalisation counts. Left out (single-turn engines), it is
    ``completion_mask``: every present token was sampled. episodes: the B completions' turns,
    tool calls and errors, from an engine that ran the tool loop (None: single turns).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    texts: list[str]
    finished: torch.Tensor
    model_mask: torch.Tensor = None  # type: ignore[assignment]  # set in __post_init__
    episodes: list[Episode] | None = None  # multi-turn engines: each completion's turns

    def __post_init__(self) -> None:
        if self.model_mask is None:  # frozen: the one assignment, at construction
            object.__setattr__(self, "model_mask", self.completion_mask)

    @property
    def input_ids(self) -> torch.Tensor:
        """[B, P + C]."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """[B, P + C]."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        """Tokens the model sampled in each completion (environment tokens not counted). [B]."""
        return self.model_mask.sum(-1)

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, rows: slice | list[int]) -> Rollout:
        """A sub-batch: a slice of rows (micro-batching) or a list of row indices."""
        return Rollout(
            self.prompt_ids[rows],
            self.prompt_mask[rows],
            self.completion_ids[rows],
            self.completion_mask[rows],
            self.logprobs[rows],
            _rows(self.texts, rows),
            self.finished[rows],
            self.model_mask[rows],
            _rows(self.episodes, rows),
        )

    def to(self, device: torch.device) -> Rollout:
        """The same rows with every tensor on ``device``."""
        return Rollout(
            self.prompt_ids.to(device),
            self.prompt_mask.to(device),
            self.completion_ids.to(device),
            self.completion_mask.to(device),
            self.logprobs.to(device),
            self.texts,
            self.finished.to(device),
            self.model_mask.to(device),
            self.episodes,
        )


def _rows(items: list | None, rows: slice | list[int]) -> list | None:
    if items is None:
        return None
    return items[rows] if isinstance(rows, slice) else [items[i] for i in rows]


def right_padded(
    rows: list[list], value: float, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Rows of different lengths (a batch's completion tokens, masks or log-probs) as one
    [B, W] tensor, padded on the right with ``value``; W is the longest row, at least 1."""
    width = max(1, max(len(row) for row in rows))
    return torch.tensor(
        [row + [value] * (width - len(row)) for row in rows], dtype=dtype, device=device
    )


def _pad(t: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
    extra = width - t.shape[1]
    if extra == 0:
        return t
    fill = torch.full((t.shape[0], extra), value, dtype=t.dtype, device=t.device)
    return torch.cat([fill, t] if left else [t, fill], dim=1)


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts generated in separate calls, padding prompts left and completions right."""
    if len(parts) == 1:
        return parts[0]
    p = max(r.prompt_ids.shape[1] for r in parts)
    c = max(r.completion_ids.shape[1] for r in parts)
    return Rollout(
        torch.cat([_pad(r.prompt_ids, p, pad_id, True) for r in parts]),
        torch.cat([_pad(r.prompt_mask, p, 0, True) for r in parts]),
        torch.cat([_pad(r.completion_ids, c, pad_id, False) for r in parts]),
        torch.cat([_pad(r.completion_mask, c, 0, False) for r in parts]),
        torch.cat([_pad(r.logprobs, c, 0.0, False) for r in parts]),
        [t for r in parts for t in r.texts],
        torch.cat([r.finished for r in parts]),
        torch.cat([_pad(r.model_mask, c, 0, False) for r in parts]),
        None if any(r.episodes is None for r in parts) else [e for r in parts for e in r.episodes],
    )


def stop_and_pad_ids(model: torch.nn.Module, tokenizer: Any) -> tuple[list[int], int]:
    """The tokens that end a completion (the generation config's, else the tokenizer's EOS) and
    the pad id every engine and trainer uses: the tokenizer's, which ``load_tokenizer`` and
    ``train_tokenizer`` always set (to EOS where the checkpoint has none)."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return (list(eos) if isinstance(eos, list | tuple) else [eos]), tokenizer.pad_token_id


class RolloutEngine(Protocol):
    """Generates completions with the weights currently being trained."""

    pad_id: int  # pads the rows of the Rollouts it returns
    model: torch.nn.Module  # the weights it generates with (FSDP2: unshard them around it)

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
        """Complete each prompt. ``seeds``: one per prompt; then prompt i's completion depends
        only on seeds[i], the prompt and the weights (not on the batch, its order, chunking or
        the process: any rank drawing it gets the same tokens). Without, the global RNG.
        ``toolboxes`` (one per prompt) with ``max_turns`` > 1: each completion is an episode of
        up to ``max_turns`` model turns, the tools' answers appended between them, within
        ``max_new_tokens`` tokens in all (``reasonrl.envs.protocol``)."""
        ...
