"""Task sources → train and held-out lists of :class:`Sample`.

Sources: reasoning-gym's procedural generators (by name and config), reasonrl's own
(:func:`procedural_generator`), HumanEval, JSONL files with ``prompt`` and ``answer`` fields,
and any ``datasets`` dataset (a hub id, a local directory, parquet/JSON/CSV files) whose
columns hold a question and an answer, read as GSM8K's ``#### 42`` or MATH's ``\\boxed{}``
solutions (:func:`dataset_samples`). Held-out problems never appear in the training split:
the training split is drawn from a different seed and filtered against the held-out questions.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from reasonrl.config import ConfigError, TaskConfig
from reasonrl.tasks.base import Sample, last_boxed
from reasonrl.tasks.files import jsonl_rows, open_dataset


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
    a missing or empty file or a bad line is a ConfigError naming the file (and line)."""
    for i, row in jsonl_rows(path, what):
        try:
            values = tuple(row.pop(f) for f in fields)
        except (KeyError, AttributeError, TypeError) as e:  # a missing field, not an object
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


_PROMPT_FIELDS = ("prompt", "question", "problem")
_ANSWER_FIELDS = ("answer", "solution")
_MARKERS = {"gsm8k": "'#### <answer>'", "boxed": "\\boxed{…}", "raw": "text"}


def gsm8k_answer(text: str) -> str | None:
    """The final answer of a GSM8K solution: what follows its last ``####``, without
    thousands separators (``"… #### 1,200"`` → ``"1200"``); None without one."""
    _, marker, tail = text.rpartition("####")
    answer = tail.strip().replace(",", "")
    return answer if marker and answer else None


def gold_answer(text: str, answer_format: str) -> str | None:
    """The gold answer in a dataset's answer field, per ``task.answer_format`` (not ``auto``:
    see :func:`detect_answer_format`); None where the field has none."""
    if answer_format == "gsm8k":
        return gsm8k_answer(text)
    if answer_format == "boxed":  # the same reading as the math verifier
        return last_boxed(text)
    return text.strip() or None


def detect_answer_format(text: str) -> str:
    """``auto``'s choice from one answer field: gsm8k (a ``####`` line), boxed, or raw."""
    if "####" in text:
        return "gsm8k"
    return "boxed" if "\\boxed" in text or "\\fbox" in text else "raw"


def _column(
    chosen: str | None, known: tuple[str, ...], columns: list[str], key: str, where: str
) -> str:
    if chosen is None:
        chosen = next((c for c in known if c in columns), None)
        if chosen is None:
            raise ConfigError(f"{where} has none of the columns {list(known)}: set task.{key}")
    if chosen not in columns:
        raise ConfigError(f"{where} has no column {chosen!r} (task.{key}); columns: {columns}")
    return chosen


def dataset_samples(cfg: TaskConfig, split: str) -> list[Sample]:
    """The problems of one split of the ``datasets`` dataset ``cfg.path``: the prompt and gold
    answer from their columns (``task.prompt_field``, ``task.answer_field``), the answer
    extracted per ``task.answer_format``, the other columns in ``meta``. Rows without a prompt
    or an answer are dropped, and how many is said once, on stderr."""
    where = f"dataset {cfg.path} [{split}]"
    try:
        ds = open_dataset(cfg.path, split, cfg.subset)
    except ConfigError as e:
        if split != cfg.eval_split:
            raise
        hint = "or task.eval_split=null to hold out task.eval_size problems of task.train_split"
        raise ConfigError(f"{e}\n(task.eval_split names the held-out split, {hint})") from e
    columns = list(ds.column_names)
    prompt_field = _column(cfg.prompt_field, _PROMPT_FIELDS, columns, "prompt_field", where)
    answer_field = _column(cfg.answer_field, _ANSWER_FIELDS, columns, "answer_field", where)
    answer_format = cfg.answer_format
    samples = []
    for row in ds:
        prompt, text = row.pop(prompt_field), row.pop(answer_field)
        text = "" if text is None else str(text)
        if answer_format == "auto":  # the first row decides for the whole split
            answer_format = detect_answer_format(text)
        answer = gold_answer(text, answer_format)
        if prompt is not None and str(prompt).strip() and answer is not None:
            samples.append(Sample(str(prompt), answer, row))
    if dropped := len(ds) - len(samples):
        marker = _MARKERS[answer_format]
        print(
            f"{where}: {dropped} of {len(ds)} rows dropped (no prompt, or no {marker} answer in "
            f"'{answer_field}'; task.answer_format={answer_format})",
            file=sys.stderr,
        )
    if not samples:
        raise ConfigError(f"{where}: no usable rows; check task.answer_field and answer_format")
    return samples


def _tagged(samples: list[Sample], **tags: str) -> list[Sample]:
    return [Sample(s.prompt, s.answer, {**s.meta, **tags}) for s in samples]


def load_splits(cfg: TaskConfig) -> tuple[list[Sample], list[Sample]]:
    """(train, held_out) for a task config; the held-out questions never occur in train.

    A ``mix`` joins its tasks' splits, each sample tagged with its task's name in
    ``meta["task"]`` (and ``task.difficulty``, where set, in ``meta["difficulty"]``). The
    training split is shuffled by ``split_seed``; the held-out split is interleaved in
    proportion to the tasks' sizes (no randomness), so that its first N problems
    (``eval.limit``, the evaluations during training) hold every task in its share."""
    if cfg.mix:
        train, keyed = [], []
        for t, entry in enumerate(cfg.mix):
            entry_train, entry_held_out = load_splits(entry)
            train += _tagged(entry_train, task=entry.name)
            n = len(entry_held_out)
            tagged = _tagged(entry_held_out, task=entry.name)
            keyed += [((i + 0.5) / n, t, s) for i, s in enumerate(tagged)]
        random.Random(cfg.split_seed).shuffle(train)
        held_out = [s for _, _, s in sorted(keyed, key=lambda k: k[:2])]
        return train, held_out
    if cfg.source == "jsonl":
        train, held_out = read_jsonl_samples(cfg.train_path), read_jsonl_samples(cfg.eval_path)
    elif cfg.source == "dataset" and cfg.eval_split is not None:
        train = dataset_samples(cfg, cfg.train_split)
        held_out = dataset_samples(cfg, cfg.eval_split)
    elif cfg.source == "dataset":  # one split: hold out eval_size of its problems
        problems = dataset_samples(cfg, cfg.train_split)
        random.Random(cfg.split_seed).shuffle(problems)
        held_out, train = problems[: cfg.eval_size], problems[cfg.eval_size :]
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
    held_out = held_out[: cfg.eval_size]
    if cfg.difficulty is not None:
        return _tagged(train, difficulty=cfg.difficulty), _tagged(
            held_out, difficulty=cfg.difficulty
        )
    return train, held_out
