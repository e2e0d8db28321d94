"""Reward models: a sequence's score, read at its last position (or averaged over its response).

Two heads (``rm.head``): ``value`` is a causal LM's decoder with a scalar head
(:class:`reasonrl.models.value.ValueModel`, saved as the decoder plus ``value_head.pt``);
``classification`` is ``AutoModelForSequenceClassification`` with one label, saved as an
ordinary ``*ForSequenceClassification`` checkpoint that other libraries load as they are.
Either starts from any causal LM checkpoint with a new head. Batches are left-padded, so the
last column is every sequence's last token (its EOS, as the pairs are encoded).

Pooling (``rm.pool``, value head only): ``last`` reads the score at the last token, as usual;
``mean`` averages the head's score over every response token, so a flaw is scored where it
is (one wrong step in a chain) rather than having to be carried to the end of the sequence.
The pooling is saved in the decoder's config (``reward_pool``) and restored on load.

Likelihood (``rm.likelihood`` β > 0, value head only): the score gains β times the mean
log-probability of the response tokens under the model's own language-model head, the
length-normalised implicit reward of SimPO. A chain with one wrong sum is what a model trained
on correct chains finds unlikely, while a scalar head read at one position has to learn that
check from pairs alone; with β the head learns what likelihood misses (a hasty chain that is
likely but wrong). The LM head is kept beside the decoder and β saved as ``reward_likelihood``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from reasonrl.algos import token_logprobs
from reasonrl.config import ConfigError, LoRAConfig
from reasonrl.models.forward import position_ids
from reasonrl.models.loading import copy_out_of_file, pick_device, resolve_model_path
from reasonrl.models.lora import apply_lora, is_lora
from reasonrl.models.value import HEAD_FILE, ValueModel

HEADS = ("value", "classification")
POOLS = ("last", "mean")


class RewardModel(torch.nn.Module):
    """A scalar score per left-padded sequence, from either head."""

    def __init__(
        self, model: torch.nn.Module, head: str, pool: str = "last", likelihood: float = 0.0
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"unknown reward-model pooling {pool!r} (one of {POOLS})")
        if pool != "last" and head != "value":
            raise ConfigError(f"pool={pool!r} needs the value head (classification reads the last)")
        if likelihood and (head != "value" or model.lm_head is None):
            raise ConfigError("a likelihood term needs the value head with its LM head kept")
        self.model = model
        self.head = head
        self.pool = pool
        self.likelihood = likelihood

    def _decoder(self) -> torch.nn.Module:
        # The decoder and the score layer directly, not the HF classifier's forward: its pooling
        # looks for the last non-pad token, which skips the EOS wherever pad and EOS are one token.
        if self.head == "value":
            return self.model.decoder
        return getattr(self.model, self.model.base_model_prefix)

    def _score(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., H] → [...] float32."""
        layer = self.model.head if self.head == "value" else self.model.score
        return layer(hidden).squeeze(-1).float()

    def _pooled(self, hidden: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """hidden [N, L, H], response_mask [N, L] (1 or True on response tokens) → [N] scores."""
        if self.pool == "last":  # the last response token (responses are never empty)
            last = response_mask.shape[1] - 1 - response_mask.long().flip(1).argmax(1)
            return self._score(hidden[torch.arange(hidden.shape[0]), last])
        mask = response_mask.float()
        return (self._score(hidden) * mask).sum(1) / mask.sum(1)

    def _mean_logprob(
        self, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, chunk_rows: int = 8
    ) -> torch.Tensor:
        """Mean log p(target) over masked positions, from the hidden states that predict them.
        hidden [N, R, H], targets and mask [N, R] → [N] float32. Rows are run through the LM
        head a few at a time, so no [N, R, vocab] tensor is made at once."""
        logp = torch.cat(
            [
                token_logprobs(
                    self.model.lm_head(hidden[i : i + chunk_rows]), targets[i : i + chunk_rows]
                )
                for i in range(0, hidden.shape[0], chunk_rows)
            ]
        )
        mask = mask.float()
        return (logp.float() * mask).sum(1) / mask.sum(1).clamp(min=1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_lengths: torch.Tensor | None = None,
        *,
        responses: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Scores of left-padded sequences. input_ids, attention_mask: [B, L] → [B] float32.
        ``response_lengths`` [B]: how many of each row's last tokens are its response (needed by
        ``mean`` pooling and the likelihood term; ``last`` alone reads the last column).

        With ``responses`` (response_ids, response_mask: [B, K, R], right-padded, no response
        empty), input_ids and attention_mask are B left-padded prompts (P ≥ 1), each run once and
        its KV cache shared by its K responses → [B, K] float32, what the first form gives each
        prompt + response up to float rounding. Both forms are this one ``forward``, so a DDP
        or FSDP2 wrapper's hooks (gradient all-reduce, parameter all-gather) run for either."""
        if responses is not None:
            return self._score_responses(input_ids, attention_mask, *responses)
        hidden = self._decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
        ).last_hidden_state
        if self.pool == "last" and not self.likelihood:
            return self._score(hidden[:, -1])
        if response_lengths is None:
            raise ValueError("mean pooling and the likelihood term need the response lengths")
        width = input_ids.shape[1]
        columns = torch.arange(width, device=input_ids.device)
        response_mask = columns >= width - response_lengths.to(input_ids.device)[:, None]
        scores = self._pooled(hidden, response_mask)
        if self.likelihood:  # position t - 1 predicts token t
            predicting = torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], 1)
            # a response whose prompt was cut away entirely has no context for its first token
            lengths = response_lengths.to(input_ids.device)[:, None]
            no_prompt = attention_mask.sum(1, keepdim=True) <= lengths
            counted = response_mask & ~((columns == width - lengths) & no_prompt)
            r = int(response_lengths.max())
            mean_logp = self._mean_logprob(predicting[:, -r:], input_ids[:, -r:], counted[:, -r:])
            scores = scores + self.likelihood * mean_logp
        return scores

    def _score_responses(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The shared-prompt form of :meth:`forward`: [B, P] prompts, [B, K, R] responses."""
        b, k, r = response_ids.shape
        decoder = self._decoder()
        prompt = decoder(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=position_ids(prompt_mask),
            use_cache=True,
        )
        cache = prompt.cache
        cache.batch_repeat_interleave(k)
        response_mask = response_mask.reshape(b * k, r)
        mask = torch.cat([prompt_mask.repeat_interleave(k, 0), response_mask], 1)
        hidden = decoder(
            input_ids=response_ids.reshape(b * k, r),
            attention_mask=mask,
            position_ids=position_ids(mask)[:, -r:],
            cache=cache,
            use_cache=True,
        ).last_hidden_state
        scores = self._pooled(hidden, response_mask)
        # + 0 × the prompt's output: FSDP2 gathers a layer's weights for the backward of each
        # call through a hook on the call's output, and without this the prompt's last layer
        # gets its gradient only through the KV cache, after the responses' backward has
        # resharded it (a zero term changes no value; ``likelihood`` uses the output anyway)
        scores = scores + 0 * prompt.last_hidden_state[:, -1, 0].float().repeat_interleave(k)
        if self.likelihood:  # the prompt's last position predicts each response's first token
            first = prompt.last_hidden_state[:, -1:].repeat_interleave(k, 0)
            predicting = torch.cat([first, hidden[:, :-1]], 1)
            counted = response_mask.clone()  # a prompt cut away entirely predicts nothing
            counted[:, 0] *= prompt_mask[:, -1].repeat_interleave(k, 0)
            mean_logp = self._mean_logprob(predicting, response_ids.reshape(b * k, r), counted)
            scores = scores + self.likelihood * mean_logp
        return scores.view(b, k)

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None) -> None:
        """HF format: the decoder and value_head.pt, or a *ForSequenceClassification model.
        ``state_dict``: this model's whole state to write instead of its own (gathered from
        the ranks' shards by ``reasonrl.distributed.full_model_state``)."""
        config = self._decoder().config
        config.reward_pool = self.pool
        config.reward_likelihood = self.likelihood
        if state_dict is not None:  # this module's keys are its model's, under "model."
            state_dict = {k.removeprefix("model."): v for k, v in state_dict.items()}
        self.model.save_pretrained(path, state_dict=state_dict)


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
    pool: str | None = None,
    likelihood: float | None = None,
) -> RewardModel:
    """A saved reward model (its head, pooling and likelihood weight detected), or a new one
    from a causal LM checkpoint with ``head`` ("value" or "classification") freshly
    initialised, ``pool`` ("last" by default, or "mean") and ``likelihood`` (the weight of the
    response's mean log-probability in the score, 0 by default). ``path``: "bundled", a local
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
    # save_pretrained writes the pooling and the likelihood weight into the decoder's config
    config = AutoConfig.from_pretrained(path) if found else None
    saved_pool = getattr(config, "reward_pool", None)
    saved_likelihood = getattr(config, "reward_likelihood", None)
    if pool is not None and saved_pool is not None and pool != saved_pool:
        raise ConfigError(f"{path} holds a reward model with {saved_pool!r} pooling, not {pool!r}")
    if likelihood is not None and saved_likelihood is not None and likelihood != saved_likelihood:
        raise ConfigError(
            f"{path} holds a reward model with likelihood weight {saved_likelihood}, "
            f"not {likelihood}"
        )
    pool = pool or saved_pool or "last"
    likelihood = likelihood if likelihood is not None else saved_likelihood or 0.0
    if head == "value":
        model: torch.nn.Module = ValueModel.from_pretrained(path, torch_dtype, bool(likelihood))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch_dtype
        )
        if model.config.pad_token_id is None:  # HF's own forward needs one for batches
            model.config.pad_token_id = model.config.eos_token_id
    copy_out_of_file(model)  # a frozen reward model must not follow a rewrite of its file
    rm = RewardModel(model, head, pool, likelihood)
    return rm.to(device or pick_device("auto"))


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


def pad_right(
    groups: Sequence[Sequence[list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """K responses per prompt, right-padded: (response_ids [B, K, R], response_mask [B, K, R])."""
    k = len(groups[0])
    width = max(len(r) for group in groups for r in group)
    ids = torch.full((len(groups), k, width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, group in enumerate(groups):
        for j, response in enumerate(group):
            ids[i, j, : len(response)] = torch.tensor(response)
            mask[i, j, : len(response)] = 1
    return ids, mask


def add_lora(rm: RewardModel, lora: LoRAConfig, checkpoint: Path | None = None) -> RewardModel:
    """Low-rank adapters on a value-head reward model's decoder; the scalar head itself trains
    in full. ``checkpoint``: a checkpoint of such a model (adapter + ``value_head.pt``) to
    resume from, loaded onto ``rm``'s base weights. Saving writes the adapter and the head;
    :func:`merge_lora` turns it back into a plain reward model."""
    if rm.head != "value":
        raise ConfigError("model.lora in the rm stage needs rm.head=value")
    rm.model.decoder = apply_lora(rm.model.decoder, lora, checkpoint, task_type=None)
    if rm.model.lm_head is not None:  # a base weight like the rest (tied: the embedding)
        rm.model.lm_head.requires_grad_(False)
    if checkpoint is not None:
        rm.model.head.load_state_dict(torch.load(Path(checkpoint) / HEAD_FILE, weights_only=True))
    return rm


def merge_lora(rm: RewardModel) -> RewardModel:
    """Fold the adapters of :func:`add_lora` into the decoder's weights (in place); a model
    without adapters (a classification head has none) as it is."""
    if rm.head == "value" and is_lora(rm.model.decoder):
        rm.model.decoder = rm.model.decoder.merge_and_unload()
    return rm
