"""Preference pairs (a prompt, a chosen and a rejected response) for reward models and DPO.

``prompt`` is the text the policy sees, chat template already applied; ``chosen`` and
``rejected`` are the two responses as plain text. Pairs are generated from chain_sum problems
(a careful correct trace against a wrong or malformed one) or read from JSONL files and
``datasets`` datasets in the common layouts (prompt/chosen/rejected, TRL conversational,
Anthropic/hh-rlhf), with the tokenizer's chat template applied to the prompt.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasonrl.config import ConfigError, PreferenceDataConfig
from reasonrl.tasks.base import Sample
from reasonrl.tasks.files import jsonl_rows, open_dataset
from reasonrl.tasks.prompts import render_prompt
from reasonrl.tasks.traces import chain_trace, estimate_trace, solution_text


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    kind: str | None = None  # generated pairs: how the rejected response is worse


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one pair; the responses end with EOS (unless truncated)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    kind: str | None = None


def fit_to_length(
    prompt: list[int], response: list[int], max_length: int
) -> tuple[list[int], list[int]]:
    """Cut the prompt from the left, then the response from the right, to ``max_length``."""
    response = response[:max_length]
    keep = max_length - len(response)
    return (prompt[max(0, len(prompt) - keep) :] if keep > 0 else []), response


def encode_pairs(
    pairs: Sequence[PreferencePair], tokenizer: Any, max_length: int
) -> tuple[list[EncodedPair], int]:
    """Tokenize pairs to at most ``max_length`` tokens per prompt + response.

    Returns the encoded pairs and how many of them had to be truncated (for the log: a
    truncated pair may have lost what made one response better, so it is never silent).
    """
    eos = tokenizer.eos_token_id
    enc = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = enc(p.prompt for p in pairs)
    chosen = [ids + [eos] for ids in enc(p.chosen for p in pairs)]
    rejected = [ids + [eos] for ids in enc(p.rejected for p in pairs)]
    out, truncated = [], 0
    for pair, p, c, r in zip(pairs, prompts, chosen, rejected, strict=True):
        pc, c2 = fit_to_length(p, c, max_length)
        pr, r2 = fit_to_length(p, r, max_length)
        # Both responses share one prompt: keep the shorter cut so the pair stays comparable.
        prompt = pc if len(pc) <= len(pr) else pr
        truncated += len(prompt) < len(p) or len(c2) < len(c) or len(r2) < len(r)
        out.append(EncodedPair(prompt, c2, r2, pair.kind))
    return out, truncated


# --------------------------------------------------------------------------- generated pairs

REJECTION_KINDS = ("estimate", "slip", "mismatch", "malformed")
_SLIPS = (-10, -2, -1, 1, 2, 10)  # how far a slipped step or a mismatched answer is off


def _slipped_trace(expression: str, at: int, delta: int) -> str:
    """A careful trace whose step ``at`` is off by ``delta``; later steps carry the error on
    correctly, so only one step is wrong and so is the final answer."""
    parts = expression.split()
    total = int(parts[0])
    steps = []
    for i, (op, raw) in enumerate(zip(parts[1::2], parts[2::2], strict=True)):
        value = int(raw)
        new = (total + value if op == "+" else total - value) + (delta if i == at else 0)
        steps.append(f"{total}{op}{value}={new}")
        total = new
    return f"<think>{', '.join(steps)}</think> <answer>{total}</answer>"


def rejected_response(sample: Sample, kind: str, rng: random.Random) -> str:
    """A worse response than the careful correct trace, of one of :data:`REJECTION_KINDS`:
    ``estimate``: the hasty rounded trace (only sensible where its answer is wrong);
    ``slip``: an arithmetic slip in one step, carried to a wrong answer;
    ``mismatch``: the correct chain with an <answer> that disagrees with it;
    ``malformed``: the correct chain without its <answer> tag, or the answer without <think>."""
    expression = sample.meta["expression"]
    steps, result = chain_trace(expression)
    if kind == "estimate":
        return solution_text(sample, estimate=True)
    if kind == "slip":
        return _slipped_trace(expression, rng.randrange(len(steps)), rng.choice(_SLIPS))
    if kind == "mismatch":
        return f"<think>{', '.join(steps)}</think> <answer>{result + rng.choice(_SLIPS)}</answer>"
    if kind == "malformed":
        if rng.random() < 0.5:
            return f"<think>{', '.join(steps)}</think> {result}"
        return f"<answer>{result}</answer>"
    raise ValueError(f"unknown rejection kind {kind!r} (one of {REJECTION_KINDS})")


def generated_pairs(
    samples: Sequence[Sample], render: Callable[[Sample], str], seed: int
) -> list[PreferencePair]:
    """One pair per chain_sum sample: the careful correct trace against a rejected response
    whose kind is drawn by ``random.Random(seed)`` (the hasty estimate only where it is wrong).
    ``render(sample)`` is the prompt text, chat template applied. Other problems (the rest of a
    task mix) are passed over; with no chain_sum problem at all this is a ConfigError."""
    rng = random.Random(seed)
    pairs = []
    samples = [s for s in samples if "expression" in s.meta]
    if not samples:
        raise ConfigError(
            "generated preference pairs need chain_sum problems (an 'expression' in the "
            "samples' metadata); use prefs source jsonl or dataset for other tasks"
        )
    for sample in samples:
        estimate_wrong = estimate_trace(sample.meta["expression"])[1] != int(sample.answer)
        kinds = REJECTION_KINDS if estimate_wrong else REJECTION_KINDS[1:]
        kind = rng.choice(kinds)
        rejected = rejected_response(sample, kind, rng)
        pairs.append(PreferencePair(render(sample), solution_text(sample), rejected, kind))
    return pairs


# --------------------------------------------------------------------------- real data

Messages = list[dict[str, str]]
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_conversation(text: str, where: str) -> Messages:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` → user/assistant messages (Anthropic/hh-rlhf)."""
    pieces = _HH_TURN.split(text)
    if pieces[0].strip() or len(pieces) < 3:
        raise ConfigError(f"{where}: not a '\\n\\nHuman: …\\n\\nAssistant: …' conversation")
    roles, contents = pieces[1::2], pieces[2::2]
    return [
        {"role": _HH_ROLES[r], "content": c.strip()} for r, c in zip(roles, contents, strict=True)
    ]


def _split_hh(text: str, where: str) -> tuple[str, str]:
    """(the conversation up to the last Assistant turn, that turn's response)."""
    cut = text.rfind("\n\nAssistant:")
    if cut < 0:
        raise ConfigError(f"{where}: no '\\n\\nAssistant:' turn")
    return text[:cut], text[cut + len("\n\nAssistant:") :].strip()


def _messages(value: Any, where: str, field: str) -> Messages:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    )
    if not ok or not value:
        raise ConfigError(f"{where}: '{field}' must be a string or a list of {{role, content}}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _response(value: Any, where: str, field: str) -> str:
    if isinstance(value, str):
        return value
    return "\n\n".join(m["content"] for m in _messages(value, where, field))


def render_messages(messages: Messages, tokenizer: Any) -> str:
    """The prompt text for ``messages``: the tokenizer's chat template with the generation
    prompt when it has one, else ``Human: …\\n\\nAssistant:`` plain text."""
    if getattr(tokenizer, "chat_template", None) is not None:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    names = {"user": "Human", "assistant": "Assistant"}
    turns = [f"{names.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


def pair_from_row(row: Any, tokenizer: Any, where: str) -> PreferencePair:
    """A pair from one row in any supported layout; ``where`` (file:line) names it in errors.

    Layouts: ``prompt``/``chosen``/``rejected`` strings (the prompt is one user message);
    TRL conversational (``prompt`` a list of {role, content}, ``chosen``/``rejected`` lists of
    messages); no ``prompt``: full conversations, either hh-rlhf text or message lists, split
    at the last assistant turn (both must share what comes before it)."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: need an object with 'chosen' and 'rejected'")
    for field in ("chosen", "rejected"):
        if row.get(field) is None:  # a datasets table fills a row's missing fields with None
            raise ConfigError(f"{where}: missing field '{field}'")
    chosen, rejected = row["chosen"], row["rejected"]
    if row.get("prompt") is not None:
        messages = _messages(row["prompt"], where, "prompt")
        chosen_text = _response(chosen, where, "chosen")
        rejected_text = _response(rejected, where, "rejected")
    elif isinstance(chosen, str) and isinstance(rejected, str):
        conversation, chosen_text = _split_hh(chosen, where)
        rejected_conversation, rejected_text = _split_hh(rejected, where)
        if rejected_conversation != conversation:
            raise ConfigError(f"{where}: chosen and rejected differ before the last Assistant turn")
        messages = parse_hh_conversation(conversation, where)
    else:
        chosen_msgs = _messages(chosen, where, "chosen")
        rejected_msgs = _messages(rejected, where, "rejected")
        if chosen_msgs[:-1] != rejected_msgs[:-1] or len(chosen_msgs) < 2:
            raise ConfigError(
                f"{where}: without a 'prompt', chosen and rejected must be conversations that "
                "differ only in their last message"
            )
        messages = chosen_msgs[:-1]
        chosen_text, rejected_text = chosen_msgs[-1]["content"], rejected_msgs[-1]["content"]
    return PreferencePair(render_messages(messages, tokenizer), chosen_text, rejected_text)


def read_preference_jsonl(
    path: str | Path, tokenizer: Any, limit: int | None = None
) -> list[PreferencePair]:
    """Pairs from a JSONL file (at most ``limit``); errors name the file and line."""
    pairs = []
    for i, row in jsonl_rows(path, "preference file"):
        if limit is not None and len(pairs) >= limit:
            break
        pairs.append(pair_from_row(row, tokenizer, f"{path}:{i}"))
    return pairs


def load_preference_dataset(
    path: str, split: str, tokenizer: Any, limit: int | None = None
) -> list[PreferencePair]:
    """Pairs from one split of a ``datasets`` dataset (at most ``limit``; see
    :func:`reasonrl.tasks.files.open_dataset` for what ``path`` may be; a single file's only
    split is ``train``). Errors name the path, split and row."""
    ds = open_dataset(path, split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [pair_from_row(row, tokenizer, f"{path} [{split}] row {i}") for i, row in enumerate(ds)]


def load_preference_pairs(
    cfg: PreferenceDataConfig,
    tokenizer: Any,
    task_train: Sequence[Sample],
    task_held_out: Sequence[Sample],
    render: Callable[[Sample], str] | None = None,
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out) pairs for ``cfg.source``: generated from the task's train and held-out
    problems (so held-out prompts never occur in training; ``render`` defaults to
    ``render_prompt(sample, tokenizer)``), or read from JSONL files or a ``datasets`` dataset."""
    if cfg.source == "generated":
        render = render or (lambda s: render_prompt(s, tokenizer))
        return (
            generated_pairs(task_train[: cfg.train_size], render, seed=0),
            generated_pairs(task_held_out[: cfg.eval_size], render, seed=1),
        )
    if cfg.source == "jsonl":
        return (
            read_preference_jsonl(cfg.train_path, tokenizer, cfg.train_size),
            read_preference_jsonl(cfg.eval_path, tokenizer, cfg.eval_size),
        )
    return (
        load_preference_dataset(cfg.train_path, cfg.train_split, tokenizer, cfg.train_size),
        load_preference_dataset(cfg.train_path, cfg.eval_split, tokenizer, cfg.eval_size),
    )
