"""Teacher-forced log-probs of completion tokens, the one model call every trainer shares.

Sequences are laid out as ``[prompt, left-padded | completion, right-padded]`` — the layout the
rollout engines return — so all completions start at the same column and only the last
``C + 1`` positions' logits are ever computed.
"""

from __future__ import annotations

import torch

from reasonrl.algos import token_entropy, token_logprobs


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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p of each of the last ``completion_len`` tokens given everything before it.

    input_ids, attention_mask: [B, L] → (logp [B, C], entropy [B, C] or None).
    """
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
    entropy = token_entropy(logits.detach(), temperature) if with_entropy else None
    return logp, entropy
