"""Run logging: metrics and samples as JSON lines, TensorBoard scalars, a live progress bar.

Everything a run records lands in its run directory:

- ``metrics.jsonl``: one ``{"step": k, "reward/mean": ..., ...}`` object per ``log`` call;
- ``samples.jsonl``: one object per logged completion, tagged with its step;
- ``events.out.tfevents.*``: the same numeric metrics for ``tensorboard --logdir runs/``.

JSON lines are the source of truth (the report reads them); TensorBoard is a convenience.
Non-finite floats are written as ``null`` because ``NaN`` is not valid JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSON-lines file into a list of dicts, skipping blank lines.

    A final line that does not parse is dropped: a run killed mid-write leaves one behind.
    A bad line anywhere else is real corruption and raises ``json.JSONDecodeError``.
    """
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return records


def _jsonable(value: Any) -> Any:
    """Make ``value`` strict-JSON safe: non-finite floats become None, tensors become numbers."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    # 0-d torch tensors and numpy scalars: log their Python value, not their repr.
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _dumps(record: Mapping[str, Any]) -> str:
    # allow_nan=False guards the invariant: anything non-finite left over is a bug, not output.
    return json.dumps(_jsonable(record), allow_nan=False, default=str, ensure_ascii=False)


def _truncate_after(path: Path, step: int) -> None:
    """Drop lines of ``path`` whose integer step is > ``step``; keep lines without one.

    Unparseable lines (a write cut short by a crash) are dropped too. The rewrite goes
    through a temporary file so an interruption here cannot lose the whole log.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        line_step = record.get("step") if isinstance(record, dict) else None
        # Only integer steps are ordered; other records (e.g. keyed by name) are kept.
        if not isinstance(line_step, int) or isinstance(line_step, bool) or line_step <= step:
            kept.append(line + "\n")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


class RunLogger:
    """Append metrics and samples to a run directory, mirroring numeric metrics to TensorBoard.

    ``resume_step=k`` first cuts both JSON-lines files back to steps ``<= k`` (and tells
    TensorBoard to purge later steps), so a run resumed from checkpoint ``k`` ends with the
    same files as one that was never interrupted.
    """

    def __init__(
        self, run_dir: Path, *, tensorboard: bool = True, resume_step: int | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        self.samples_path = self.run_dir / SAMPLES_FILE
        if resume_step is not None:
            _truncate_after(self.metrics_path, resume_step)
            _truncate_after(self.samples_path, resume_step)
        # Line-buffered: every record reaches the OS as soon as it is written (Ctrl-C safe).
        self._metrics = self.metrics_path.open("a", encoding="utf-8", buffering=1)
        self._samples = None  # opened on first use, so runs without samples have no empty file
        self._writer = None
        if tensorboard:
            # Imported lazily: it is slow, and tensorboard=False should not need it at all.
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge, flush_secs=30)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write one ``{"step": step, **metrics}`` line and a TensorBoard scalar per number."""
        record = {"step": step, **_jsonable(metrics)}
        self._metrics.write(_dumps(record) + "\n")
        self._metrics.flush()
        if self._writer is None:
            return
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            self._writer.add_scalar(key, value, global_step=step)

    def log_samples(self, step: int, samples: Iterable[Mapping[str, Any]]) -> None:
        """Append one ``{"step": step, **sample}`` line per sample to ``samples.jsonl``."""
        if self._samples is None:
            self._samples = self.samples_path.open("a", encoding="utf-8", buffering=1)
        for sample in samples:
            self._samples.write(_dumps({"step": step, **sample}) + "\n")
        self._samples.flush()

    def close(self) -> None:
        """Flush and close the files and the TensorBoard writer. Safe to call twice."""
        self._metrics.close()
        if self._samples is not None:
            self._samples.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ProgressHandle:
    """What ``training_progress`` yields: call ``update(step, reward=..., kl=...)`` each step."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def update(self, step: int, **fields: float) -> None:
        """Move the bar to ``step`` completed steps and show ``fields`` to 3 significant digits."""
        info = "  ".join(f"{name} {value:.3g}" for name, value in fields.items())
        self._progress.update(self._task, completed=step, info=info)


@contextmanager
def training_progress(
    total: int, description: str, start: int = 0, *, console: Console | None = None
) -> Iterator[ProgressHandle]:
    """A progress bar: description, bar, ``M/N``, elapsed, ETA and the latest fields.

    ``start`` is the first step of a resumed run; the ETA counts only steps done in this
    process. On a non-terminal stdout (logs, CI) rich skips the live redraws and prints the
    final state once, so log files are not flooded.
    """
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, completed=start, info="")
        yield ProgressHandle(progress, task)
