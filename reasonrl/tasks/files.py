"""Reading data files that a recipe names: JSONL line by line, and ``datasets`` datasets.

Every problem a file can have is a :class:`ConfigError` that names the file (and the line or
split) and what to do, never a traceback: a missing or empty file, a line that is not UTF-8 or
not JSON, a dataset or split that cannot be loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reasonrl.config import ConfigError, looks_local


def jsonl_rows(path: str | Path, what: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line of the JSONL file ``path``.

    ``what`` names the file's role in errors ("task file"). A missing file, one with no rows,
    and a line that is not UTF-8 or not JSON are ConfigErrors naming the file (and line)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    rows = 0
    # Decoded line by line, so that an encoding error names its line.
    for i, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"{path}:{i}: not UTF-8 ({e.reason} at byte {e.start + 1} of the line): "
                "save it as UTF-8"
            ) from e
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{i}: not JSON ({e})") from e
        rows += 1
        yield i, row
    if not rows:
        raise ConfigError(f"{what} {path} is empty: it needs one JSON object per line")


_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def check_dataset_path(path: str) -> None:
    """A ConfigError if ``path`` names a local dataset that is not there (a hub id is taken as
    given: nothing is downloaded to check it)."""
    if looks_local(path) and not Path(path).expanduser().exists():
        raise ConfigError(f"dataset not found: {Path(path).expanduser()}")


def open_dataset(path: str, split: str, subset: str | None = None) -> Any:
    """``datasets.load_dataset`` of a hub id (with its ``subset``, the config name such as
    gsm8k's "main"), a local dataset directory (``train.parquet``/``test.parquet`` give the
    splits), or one local parquet, JSON/JSONL or CSV file (its only split is ``train``)."""
    import datasets

    check_dataset_path(path)
    local = Path(path).expanduser()
    suffixes = [s for s in local.suffixes if s != ".gz"]
    try:
        if local.is_file() and suffixes and suffixes[-1] in _FILE_BUILDERS:
            builder = _FILE_BUILDERS[suffixes[-1]]
            ds = datasets.load_dataset(builder, data_files=str(local), split=split)
        else:
            ds = datasets.load_dataset(path, subset, split=split)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
        raise ConfigError(f"could not load split {split!r} of dataset {path!r}: {e}") from e
    if len(ds) == 0:
        raise ConfigError(f"split {split!r} of dataset {path!r} is empty")
    return ds
