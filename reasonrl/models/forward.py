"""Teacher-forced log-probs of completion tokens, the one model call every trainer shares.

Sequences are laid out as ``[prompt, left-padded | completion, right-padded]`` — the layout the
rollout engines return — so all completions start at the same column and only the last
``C + 1`` positions' logits are ever computed.

Packed (``pack_tokens`` > 0): the padding is dropped and the sequences are laid end to end in
rows of at most ``pack_tokens`` tokens, each with positions restarting at 0 and no attention
mask, from which transformers builds a block-diagonal causal mask (eager, sdpa, flex) or
variable-length kernels (flash attention). Only the positions that predict completion tokens
reach the LM head, and the log-probs come back in the padded ``[B, C]`` layout (0 where
masked), so every loss reads them the same way. Each packed row is one forward; on several
ranks every rank runs as many as the rank with the most rows (``PackedBatch.even``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonrl.algos import token_entropy, token_logprobs
from reasonrl.distributed import Ranks, all_gather_objects


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` assigns them. [B, L] → [B, L]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    pack_tokens: int = 0,
    entropy_grad: bool = False,
    ranks: Ranks = Ranks(),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p of each of the last ``completion_len`` tokens given everything before it.

    input_ids, attention_mask: [B, L] → (logp [B, C], entropy [B, C] or None). ``pack_tokens``
    > 0: the forward runs on packed rows of at most that many tokens (a longer sequence gets a
    row of its own); log-probs and entropies are 0 at masked positions; with several ``ranks``
    every rank must call it together (they agree on the number of forwards). The entropy is
    detached (a statistic) unless ``entropy_grad`` (an entropy bonus in the loss).
    """
    if pack_tokens:
        return _packed_logprobs(
            model,
            input_ids,
            attention_mask,
            completion_len,
            temperature,
            with_entropy,
            pack_tokens,
            entropy_grad,
            ranks,
        )
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        logits_to_keep=completion_len + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1]
    targets = input_ids[:, -completion_len:]
    logp = token_logprobs(logits, targets, temperature)
    entropy = None
    if with_entropy:
        entropy = token_entropy(logits if entropy_grad else logits.detach(), temperature)
    return logp, entropy


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequence indices per packed row: in order, a new row whenever the next sequence would
    take the current one past ``capacity`` tokens (a longer sequence fills a row alone)."""
    rows: list[list[int]] = []
    used = capacity
    for i, n in enumerate(lengths):
        if used + n > capacity or not rows:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


@dataclass
class PackedRow:
    """One packed row: its tokens and positions [T], and ``keep`` [n], the indices of the
    positions that predict completion tokens (the token before each one), in order."""

    ids: torch.Tensor
    positions: torch.Tensor
    keep: torch.Tensor


@dataclass
class PackedBatch:
    """A ``[prompt, left-padded | completion, right-padded]`` batch [B, L] as packed rows."""

    rows: list[PackedRow]
    index: torch.Tensor  # where each kept position's value goes in the flattened [B, C]
    shape: tuple[int, int]  # (B, C)

    def unpack(self, values: list[torch.Tensor]) -> torch.Tensor:
        """The rows' values at their kept positions, concatenated → [B, C], 0 where masked (the
        values of ``even``'s filler rows are left out, with a zero gradient)."""
        flat = torch.cat(values) if values else torch.zeros(0, device=self.index.device)
        flat = flat[: len(self.index)]
        out = flat.new_zeros(self.shape[0] * self.shape[1]).index_put((self.index,), flat)
        return out.view(self.shape)

    def even(self, ranks: Ranks) -> PackedBatch:
        """These rows, then filler rows up to the most rows any rank packed: the same number of
        forwards on every rank. Under FSDP2 each forward, and the backward through it, is a
        collective. A filler row (two tokens) keeps one position, so a backward runs through it
        (an empty one would be skipped), and ``unpack`` drops its value: exact zeros are added
        to the gradients. Every rank calls it together."""
        most = max(all_gather_objects(len(self.rows), ranks))
        device = self.index.device
        filler = PackedRow(
            ids=torch.zeros(2, dtype=torch.long, device=device),
            positions=torch.arange(2, device=device),
            keep=torch.zeros(1, dtype=torch.long, device=device),
        )
        return PackedBatch(self.rows + [filler] * (most - len(self.rows)), self.index, self.shape)


def pack_batch(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_len: int, pack_tokens: int
) -> PackedBatch:
    """The sequences of a padded batch laid end to end in rows of at most ``pack_tokens``
    tokens (rows with no completion token are left out)."""
    b, width = input_ids.shape
    start = width - completion_len  # the first completion column
    mask = attention_mask.bool()
    prompt_lens = mask[:, :start].sum(1)
    completion_lens = mask[:, start:].sum(1)
    columns = torch.arange(width, device=mask.device)
    layout = (columns >= start - prompt_lens[:, None]) & (
        columns < start + completion_lens[:, None]
    )
    if not torch.equal(layout, mask) or not bool((prompt_lens > 0).all()):
        raise ValueError("packing needs [prompt, left-padded | completion, right-padded] rows")
    p, c = prompt_lens.tolist(), completion_lens.tolist()
    device = input_ids.device
    rows, where = [], []
    for row in pack_rows([p[i] + c[i] for i in range(b)], pack_tokens):
        offsets = torch.tensor([0] + [p[i] + c[i] for i in row]).cumsum(0).tolist()
        keep = torch.cat(
            [torch.arange(c[i], device=device) + offsets[n] + p[i] - 1 for n, i in enumerate(row)]
        )
        if keep.numel() == 0:
            continue
        rows.append(
            PackedRow(
                ids=torch.cat([input_ids[i, start - p[i] : start + c[i]] for i in row]),
                positions=torch.cat([torch.arange(p[i] + c[i], device=device) for i in row]),
                keep=keep,
            )
        )
        where.extend(i * completion_len + j for i in row for j in range(c[i]))
    index = torch.tensor(where, dtype=torch.long, device=device)
    return PackedBatch(rows, index, (b, completion_len))


def _packed_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float,
    with_entropy: bool,
    pack_tokens: int,
    entropy_grad: bool,
    ranks: Ranks,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    packed = pack_batch(input_ids, attention_mask, completion_len, pack_tokens).even(ranks)
    logps, entropies = [], []
    for row in packed.rows:
        logits = model(
            input_ids=row.ids[None],
            position_ids=row.positions[None],
            logits_to_keep=row.keep,
            use_cache=False,
        ).logits[0]
        logps.append(token_logprobs(logits, row.ids[row.keep + 1], temperature))
        if with_entropy:
            entropies.append(
                token_entropy(logits if entropy_grad else logits.detach(), temperature)
            )
    return packed.unpack(logps), (packed.unpack(entropies) if with_entropy else None)
