"""Drawing one token per row, shared by the rollout engines.

``sample_tokens`` applies temperature, top-k and top-p (transformers' order and rule) and draws
by Gumbel-max, ``argmax(warped logit + Gumbel noise)``: an exact sample with torch ops only (no
``multinomial``, no host sync, so it runs inside the fast engine's CUDA graphs).

The noise comes from the global torch RNG, or, given per-row seeds, from a counter-based hash
of (row seed, completion token index, vocab index). A seeded row's tokens are then a function
of its seed and its logits alone: not of the other rows in the batch, their order, chunking,
left padding, the process or the global RNG. So a completion is the same whichever rank or
worker draws it. The hash is 32-bit integer arithmetic held in int64 (every product stays below
2**63), so the noise bits are the same on CPU and CUDA; the float transform to Gumbel noise may
differ there by an ulp. ``completion_seeds`` and ``eval_seeds`` derive the row seeds a trainer
and an evaluation pass, from the run seed and the problem, never from the rank or the row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

MASK32 = 0xFFFFFFFF
# Odd multipliers of the xorshift-multiply mixer, both below 2**31 so that x * c < 2**63 for
# any 32-bit x (exact in int64 on every backend). Shifts 16/15/15 with these constants are a
# low-bias 32-bit integer hash found by Wellons' hash-prospector search.
_MUL = (0x21F0AAAD, 0x735A2D97)
# Round keys of the seed-and-position Feistel rounds (fractional digits of pi).
_ROUND_KEYS = (0x243F6A88, 0x85A308D3)


def _mix32_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """A bijection of [0, 2**32) with good avalanche, in place. x: int64 holding 32-bit values;
    scratch: a buffer of x's shape. In place because on [B, V] the allocations of the plain
    expressions cost several times the arithmetic on CPU."""
    for shift, mul in ((16, _MUL[0]), (15, _MUL[1])):
        x ^= torch.bitwise_right_shift(x, shift, out=scratch)
        x.mul_(mul).bitwise_and_(MASK32)
    x ^= torch.bitwise_right_shift(x, 15, out=scratch)
    return x


def seed_tensor(seeds: Sequence[int], rows: int, device: torch.device | str) -> torch.Tensor:
    """The per-row seeds as int64 (each taken mod 2**64, as its two's-complement bits). [rows]"""
    if len(seeds) != rows:
        raise ValueError(f"got {len(seeds)} seeds for {rows} prompts: one seed per prompt")
    bits = [s & (2**64 - 1) for s in seeds]
    return torch.tensor([b - 2**64 if b >= 2**63 else b for b in bits], device=device)


def hash_bits(
    seeds: torch.Tensor, position: int | torch.Tensor, vocab: torch.Tensor
) -> torch.Tensor:
    """32 random bits for each (row, vocab index) at one completion token.

    seeds: [B] int64; position: the index of the completion token being drawn, counted from
    the completion's first token so that left padding never shifts it (an int, or an int64
    tensor of shape [] or [B]); vocab: [N] or [B, N] int64 vocab indices → [B, N] int64 in
    [0, 2**32).

    Two Feistel rounds keyed by the position turn the 64-bit seed into a 64-bit stream key
    (distinct seeds give distinct keys at a position); two more rounds mix in the vocab index.
    Each round is a bijection, so no two vocab entries of a stream share their input.
    """
    hi, lo = (seeds >> 32) & MASK32, seeds & MASK32
    pos = position & MASK32
    for key in _ROUND_KEYS:
        hi, lo = lo, hi ^ _mix32_(lo ^ pos ^ key, torch.empty_like(lo))
    lo = lo.unsqueeze(-1) ^ vocab  # [B, N]
    scratch = torch.empty_like(lo)
    hi = _mix32_(lo.clone(), scratch).bitwise_xor_(hi.unsqueeze(-1))
    return _mix32_(hi, scratch).bitwise_xor_(lo)


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    seeds: torch.Tensor | None = None,
    position: int | torch.Tensor = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return it and its log-prob under ``softmax(logits / t)``.

    logits: [B, V] → (ids [B] int64, logp [B] float32). Greedy takes the argmax and scores it at
    temperature 1. Otherwise top-k keeps the k largest logits, then top-p keeps the smallest
    prefix of the remaining tokens (by descending probability, renormalised) whose mass reaches
    ``top_p`` — the order and rule of transformers' warpers. The draw is Gumbel-max with noise
    from the global RNG, or with ``seeds`` ([B] int64) from ``hash_bits(seeds, position, ·)``.
    """
    scaled = logits.float() / (1.0 if greedy else temperature)
    if greedy:
        ids = scaled.argmax(-1)
    else:
        k = top_k if 0 < top_k < scaled.shape[-1] else 0
        if k == 0 and top_p >= 1.0:
            cand, idx = scaled, None
        elif k:
            cand, idx = scaled.topk(k, dim=-1)  # sorted, descending
        else:
            cand, idx = scaled.sort(dim=-1, descending=True)
        if top_p < 1.0:
            probs = cand.softmax(-1)
            before = probs.cumsum(-1) - probs  # mass of the more likely candidates
            cand = cand.masked_fill(before >= top_p, float("-inf"))
        if seeds is None:
            uniform = torch.rand_like(cand).clamp_(min=1e-20)
        else:
            # Noise is indexed by vocab entry, not by rank among the candidates.
            vocab = torch.arange(cand.shape[-1], device=cand.device) if idx is None else idx
            # The top 23 bits, made odd: j / 2**24 for odd j, exact in float32 and inside (0, 1).
            bits = hash_bits(seeds, position, vocab)
            uniform = bits.bitwise_right_shift_(8).bitwise_or_(1).float().mul_(2.0**-24)
        gumbel = uniform.log_().neg_().log_().neg_()
        choice = (cand + gumbel).argmax(-1)
        ids = choice if idx is None else idx.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    picked = scaled.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return ids, picked - torch.logsumexp(scaled, dim=-1)


def derive_seed(*key: str | int) -> int:
    """A 63-bit seed from a key: BLAKE2b of its text, the same in every process, platform and
    Python version (``hash()`` is salted per process for strings)."""
    text = ":".join(str(part) for part in key).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def completion_seeds(
    seed: int, step: int, prompt_indices: Sequence[int], group: int, sampling_round: int = 0
) -> list[int]:
    """The seeds of a step's completions, laid out as the trainer repeats its prompts: for each
    index in ``prompt_indices`` (dataset indices, as ``step_indices`` returns), ``group`` seeds
    in a row. Seed (i, j) is a function of (run seed, step, sampling round, dataset index, j)
    only. An index drawn twice in one step (an epoch boundary) gets fresh seeds for its second
    group: pass the step's whole index list, then take a rank's rows from the result."""
    seen: dict[int, int] = {}
    out: list[int] = []
    for index in prompt_indices:
        repeat = seen.get(index, 0)
        seen[index] = repeat + 1
        out += [
            derive_seed("train", seed, step, sampling_round, index, repeat, j) for j in range(group)
        ]
    return out


def eval_seeds(seed: int, problem_indices: Sequence[int], k: int) -> list[int]:
    """The seeds of pass@k samples, ``k`` per problem in a row: sample j of problem i is a
    function of (seed, i, j). The before and after evaluations of a run draw with the same
    seeds, so their difference is the weights', not the noise's."""
    return [derive_seed("eval", seed, i, j) for i in problem_indices for j in range(k)]
