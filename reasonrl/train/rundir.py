"""Run directories: one live run in each, ``--overwrite`` that removes only a run, and the
messages for a directory that cannot be written.

A run holds an exclusive ``flock`` on ``RUN_DIR/.reasonrl-run`` for its whole life; the file
holds the run's PID, for the message that refuses a second run. The kernel drops a flock when
its process dies, however it dies, so the lock of a killed run is stale by construction and the
next run simply takes it. A run that stops before it writes its config (refused by a check)
removes the file again, and the directory if it made it.

Leaves out: NFS before v4 (``flock`` there may be local to one machine), and a run that forks a
child which outlives it (the child's copy of the descriptor keeps the lock until it exits).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import yaml
from rich.console import Console

from reasonrl.config import ConfigError, read_recipe

LOCK_FILE = ".reasonrl-run"
# What a run writes first (the resolved config), by which --overwrite recognises one.
CONFIG_FILE = "config.yaml"
PIPELINE_FILE = "pipeline.yaml"


def pipeline_run_dir(recipe: str) -> Path:
    """Where ``reasonrl run`` puts a multi-stage recipe's run without --out: the recipe's
    top-level ``out``, else runs/<name>."""
    data = read_recipe(recipe)[0]
    return Path(str(data.get("out") or f"runs/{data.get('name', Path(recipe).stem)}"))


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock inside (creating the directory); a ConfigError at once if
    another live run holds it, or if the directory cannot be written."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = _take(run_dir / LOCK_FILE)
    except OSError as e:
        message = write_error(run_dir, e) or (
            f"cannot use {run_dir} as a run directory ({e.strerror}): pass --out DIR for another"
        )
        raise ConfigError(message) from None
    try:
        yield
    finally:
        # A run refused by a check (nothing to resume…) leaves no trace of itself. Safe while
        # locked: a run that opened the file meanwhile sees it gone, and opens it anew.
        with suppress(OSError):  # best effort: the directory may have gone meanwhile
            if not holds_run(run_dir):
                (run_dir / LOCK_FILE).unlink()
                if created and not any(run_dir.iterdir()):
                    run_dir.rmdir()
        os.close(fd)


def _take(path: Path) -> int:
    """A descriptor of ``path`` holding its exclusive flock, with our PID written in it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(_in_use(path.parent, pid)) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed the file as we opened it: lock the new one
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:  # a full disk: give the lock back with the error
        os.close(fd)
        raise
    return fd


def _in_use(run_dir: Path, pid: str) -> str:
    return (
        f"{run_dir} is in use by another reasonrl run (PID {pid}): wait for it to end, or pass "
        "--out DIR for another directory"
    )


def refuse_if_in_use(run_dir: Path) -> None:
    """A ConfigError when a live run holds ``run_dir``: the command line asks before its slow
    imports (torch, transformers: seconds), so a second run is refused at once. The run still
    takes the lock itself (``locked``); this only spares the wait."""
    if (pid := _holder(Path(run_dir) / LOCK_FILE)) is not None:
        raise ConfigError(_in_use(Path(run_dir), pid))


def _holder(path: Path) -> str | None:
    """The PID in lock file ``path`` if a live process holds it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)
    return None


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a reasonrl run: the resolved config a run writes first
    (``config.yaml`` with a ``stage`` and a ``task``) or a pipeline's (``pipeline.yaml``, a
    mapping of stage configs)."""

    def mapping(name: str) -> dict:
        try:
            data = yaml.safe_load((run_dir / name).read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    config, pipeline = mapping(CONFIG_FILE), mapping(PIPELINE_FILE)
    stages = list(pipeline.values())
    return {"stage", "task"} <= config.keys() or (
        bool(stages) and all(isinstance(s, dict) and "stage" in s for s in stages)
    )


def prepare_dir(
    run_dir: Path,
    has_run: bool,
    resume: bool,
    overwrite: bool,
    console: Console,
    what: str = "a run",
    inputs: Collection[str] = (),
) -> None:
    """Make ``run_dir`` ready for a run (or a pipeline: ``what``) whose lock the caller holds:
    an earlier run there (``has_run``) is continued with ``resume``, replaced with
    ``overwrite`` (:func:`clear_run_dir`), else refused; a fresh run needs a new or empty
    directory (:func:`_refuse_foreign_files`; ``inputs`` are files handed to it)."""
    if has_run and not (resume or overwrite):
        raise ConfigError(
            f"{run_dir} already holds {what}: pass --resume to continue it, --overwrite to "
            "replace it, or --out DIR for a new directory"
        )
    if resume and not has_run:
        raise ConfigError(f"nothing to resume in {run_dir}")
    if not (has_run or overwrite):
        _refuse_foreign_files(run_dir, inputs)
    if overwrite and not resume and run_dir.exists():
        clear_run_dir(run_dir, console)
    run_dir.mkdir(parents=True, exist_ok=True)


def _refuse_foreign_files(run_dir: Path, inputs: Collection[str]) -> None:
    """A fresh run writes config.yaml, metrics.jsonl, model/ and more into its directory (and a
    later --overwrite empties it): a directory that already holds files of no run is refused,
    so none of them is written over or removed. ``inputs`` are files handed to the run (a
    pipeline's stage gets the previous stage's evaluation as its "before")."""
    if not run_dir.is_dir():
        return
    others = sorted(
        p.name + "/" * p.is_dir()
        for p in run_dir.iterdir()
        if p.name != LOCK_FILE and p.name not in inputs
    )
    if others:
        shown = ", ".join(others[:4]) + (", …" if len(others) > 4 else "")
        raise ConfigError(
            f"{run_dir} is not empty ({shown}) and holds no reasonrl run: a run there would "
            "write over its files; pass --out DIR for a new or empty directory"
        )


def clear_run_dir(run_dir: Path, console: Console) -> None:
    """``--overwrite``: remove the earlier run in ``run_dir`` (whose lock the caller holds),
    and say what went. Anything that is not a reasonrl run, or that holds a live run in a
    stage directory, is refused and left as it is."""
    entries = sorted(p for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if not entries:
        return
    if not holds_run(run_dir):
        raise ConfigError(
            f"--overwrite refused: {run_dir} does not hold a reasonrl run (no {CONFIG_FILE} or "
            f"{PIPELINE_FILE} of one); pass --out DIR for a new directory, or empty it yourself"
        )
    for sub in (p for p in entries if p.is_dir()):  # a pipeline's stage directories
        if (pid := _holder(sub / LOCK_FILE)) is not None:
            raise ConfigError(f"--overwrite refused: {_in_use(sub, pid)}")
    names = ", ".join(p.name + "/" * p.is_dir() for p in entries)
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    console.print(f"--overwrite: removed the earlier run in {run_dir}: {names}", markup=False)


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or of a pipeline's latest stage that has one."""
    from reasonrl.train.checkpoint import latest_checkpoint  # torch: not needed to lock

    stages = sorted(
        (d for d in Path(run_dir).glob("*-*") if d.is_dir() and d.name.split("-")[0].isdigit()),
        key=lambda d: int(d.name.split("-")[0]),
    )
    found = [c for d in [Path(run_dir), *stages] if (c := latest_checkpoint(d)) is not None]
    return found[-1] if found else None


def write_error(run_dir: Path, error: BaseException) -> str | None:
    """The message for a run directory that cannot be written (read-only, no permission, the
    disk full), or None when ``error`` is something else."""
    code, filename = _os_error(error)
    if code in (errno.ENOSPC, errno.EDQUOT):
        last = last_checkpoint(run_dir)
        if last is None:
            kept = "no checkpoint had been saved yet; free some space, then start it again"
        else:
            kept = f"the last complete checkpoint, {last}, is intact: free some space, then"
            kept += " continue with --resume"
        where = filename or f"under {os.path.realpath(run_dir)}"
        return f"the disk is full: writing {where} failed ({os.strerror(code)}); {kept}"
    inside = filename is not None and Path(os.path.abspath(filename)).is_relative_to(
        os.path.abspath(run_dir)
    )
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) and inside:
        return (
            f"cannot write to the run directory {run_dir} ({os.strerror(code)}): pass --out DIR "
            "for a directory you can write"
        )
    return None


def _os_error(error: BaseException) -> tuple[int | None, str | None]:
    """The errno and file name of the OS error behind ``error``: the OSError itself or one it
    was raised from (torch wraps it in a RuntimeError), or the ``(os error N)`` in a Rust
    library's message (safetensors)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno, e.filename
        if match := re.search(r"\(os error (\d+)\)", str(e)):
            return int(match[1]), None
        e = e.__cause__ or e.__context__
    return None, None
