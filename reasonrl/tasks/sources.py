"""Task sources → train and held-out lists of :class:`Sample`.

Sources: reasoning-gym's procedural generators (by name and config), reasonrl's own
(:func:`procedural_generator`), HumanEval, and JSONL files with ``prompt`` and ``answer``
fields. Held-out problems never appear in the training split: the training split is drawn from
a different seed and filtered against the held-out questions.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from reasonrl.config import ConfigError, TaskConfig
from reasonrl.tasks.base import Sample


def reasoning_gym_samples(name: str, size: int, seed: int, params: dict[str, Any]) -> list[Sample]:
    """``size`` problems from the reasoning-gym dataset ``name`` with the given config."""
    import reasoning_gym

    try:
        ds = reasoning_gym.create_dataset(name, size=size, seed=seed, **params)
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"reasoning-gym task {name!r} with params {params}: {e}") from e
    return [Sample(x["question"], str(x["answer"]), dict(x["metadata"])) for x in ds]


def procedural_generator(name: str) -> Callable[[int, int, dict[str, Any]], list[Sample]]:
    """reasonrl's own task generator called ``name``: ``fn(size, seed, params) → samples``."""
    from reasonrl.tasks.linear import TASK_NAME, linear_function_samples

    generators = {TASK_NAME: linear_function_samples}
    if name not in generators:
        raise ConfigError(f"unknown procedural task {name!r} (known: {sorted(generators)})")
    return generators[name]


def _jsonl_rows(path: str | Path, fields: tuple[str, str], what: str) -> Iterator[tuple[Any, ...]]:
    """(*the two ``fields``, the rest of the row) for each non-blank line of a JSONL file;
    a missing file or a bad line is a ConfigError naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            values = tuple(row.pop(f) for f in fields)
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            names = " and ".join(f"'{f}'" for f in fields)
            raise ConfigError(f"{path}:{i}: need a JSON object with {names} ({e})") from e
        yield (*values, row)


def read_jsonl_samples(path: str | Path) -> list[Sample]:
    """Samples from a JSONL file whose lines have ``prompt`` and ``answer`` (other keys → meta)."""
    return [
        Sample(str(prompt), str(answer), row)
        for prompt, answer, row in _jsonl_rows(path, ("prompt", "answer"), "task file")
    ]


def read_sft_pairs(path: str | Path) -> list[tuple[Sample, str]]:
    """(sample, completion) pairs from JSONL lines with ``prompt`` and ``completion`` fields."""
    return [
        (Sample(str(prompt), str(row.pop("answer", "")), row), str(completion))
        for prompt, completion, row in _jsonl_rows(path, ("prompt", "completion"), "SFT data file")
    ]


def _tagged(samples: list[Sample], task: str) -> list[Sample]:
    return [Sample(s.prompt, s.answer, {**s.meta, "task": task}) for s in samples]


def load_splits(cfg: TaskConfig) -> tuple[list[Sample], list[Sample]]:
    """(train, held_out) for a task config; the held-out questions never occur in train.

    A ``mix`` joins its tasks' splits, each sample tagged with its task's name in
    ``meta["task"]``. The training split is shuffled by ``split_seed``; the held-out split is
    interleaved in proportion to the tasks' sizes (no randomness), so that its first N
    problems (``eval.limit``, the evaluations during training) hold every task in its share."""
    if cfg.mix:
        train, keyed = [], []
        for t, entry in enumerate(cfg.mix):
            entry_train, entry_held_out = load_splits(entry)
            train += _tagged(entry_train, entry.name)
            n = len(entry_held_out)
            tagged = _tagged(entry_held_out, entry.name)
            keyed += [((i + 0.5) / n, t, s) for i, s in enumerate(tagged)]
        random.Random(cfg.split_seed).shuffle(train)
        held_out = [s for _, _, s in sorted(keyed, key=lambda k: k[:2])]
        return train, held_out
    if cfg.source == "jsonl":
        train, held_out = read_jsonl_samples(cfg.train_path), read_jsonl_samples(cfg.eval_path)
    elif cfg.source == "humaneval":
        from reasonrl.tasks.humaneval import humaneval_samples

        problems = humaneval_samples()
        random.Random(cfg.split_seed).shuffle(problems)
        held_out, train = problems[: cfg.eval_size], problems[cfg.eval_size :]
    elif cfg.source == "procedural":
        generate = procedural_generator(cfg.name)
        held_out = generate(cfg.eval_size, cfg.split_seed, cfg.params)
        train = generate(cfg.train_size + cfg.eval_size, cfg.split_seed + 1, cfg.params)
    else:
        held_out = reasoning_gym_samples(cfg.name, cfg.eval_size, cfg.split_seed, cfg.params)
        # Oversample, then drop anything that is also a held-out question.
        train = reasoning_gym_samples(
            cfg.name, cfg.train_size + cfg.eval_size, cfg.split_seed + 1, cfg.params
        )
    seen = {s.prompt for s in held_out}
    train = [s for s in train if s.prompt not in seen]
    if cfg.source in ("reasoning_gym", "procedural"):
        train = train[: cfg.train_size]
    if not train:
        raise ConfigError("the training split is empty after removing held-out questions")
    return train, held_out[: cfg.eval_size]
