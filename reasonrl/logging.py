"""Run logging: metrics and samples as JSON lines, experiment trackers, a live progress bar.

Everything a run records lands in its run directory:

- ``metrics.jsonl``: one ``{"step": k, "reward/mean": ..., ...}`` object per ``log`` call;
- ``samples.jsonl``: one object per logged completion, tagged with its step;
- the trackers of ``log.report_to``, each given the same numeric metrics at the same steps,
  and the samples as a table: ``tensorboard`` (``events.out.tfevents.*``, for
  ``tensorboard --logdir runs/``), ``wandb`` (``wandb/``; offline unless ``WANDB_MODE`` is set or
  an API key is at hand, so it needs no network) and ``trackio`` (``trackio/``, local, or
  ``$TRACKIO_DIR``). wandb and trackio also get the whole resolved config.

JSON lines are the source of truth (the report reads them); the trackers are a convenience.
Non-finite floats are written as ``null`` because ``NaN`` is not valid JSON; trackers skip them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import netrc
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

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

from reasonrl.config import ConfigError, RunConfig

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
SAMPLES_TABLE = "samples"  # the trackers' key of the sample tables


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


def check_trackers(report_to: Sequence[str]) -> None:
    """ConfigError unless every tracker of ``log.report_to`` can be imported: said when the run
    starts, not at its first log, minutes in."""
    for name in report_to:
        if name in ("wandb", "trackio") and importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"log.report_to lists {name}, which is not installed: "
                f"pip install 'reasonrl[{name}]' (or remove it from log.report_to)"
            )


def _wandb_logged_in() -> bool:
    """Whether wandb has an API key for its server: WANDB_API_KEY or a netrc entry (where
    ``wandb login`` writes it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _flat_row(sample: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A sample as one table row: nested mappings become ``rewards/answer`` columns."""
    row: dict[str, Any] = {}
    for key, value in sample.items():
        if isinstance(value, Mapping):
            row.update(_flat_row(value, f"{prefix}{key}/"))
        else:
            row[f"{prefix}{key}"] = value
    return row


class _TensorBoard:
    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        # Imported lazily: it is slow, and runs without TensorBoard should not need it at all.
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge, flush_secs=30)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)

    def log_table(self, step: int, columns: list[str], rows: list[list[Any]]) -> None:
        pass  # TensorBoard has no tables: its samples are samples.jsonl (and report.html)

    def close(self) -> None:
        self.writer.close()


class _HostedTracker:
    """wandb and trackio share one interface: a run with ``log(dict, step=)`` and ``finish()``,
    and a ``Table(columns=, data=)``."""

    run: Any
    table: Any

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def log_table(self, step: int, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({SAMPLES_TABLE: self.table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()


class _Wandb(_HostedTracker):
    def __init__(self, run_dir: Path, project: str, config: Mapping[str, Any]) -> None:
        import wandb

        mode = None  # wandb's own choice: WANDB_MODE, or online when logged in
        if not os.environ.get("WANDB_MODE") and not _wandb_logged_in():
            mode = "offline"
            # No network here: keep wandb's service from reporting errors or usage to its
            # servers (read once, when the service starts, hence the environment).
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        self.run = wandb.init(
            project=project, name=run_dir.name, dir=str(run_dir), config=dict(config), mode=mode
        )
        self.table = wandb.Table


class _Trackio(_HostedTracker):
    def __init__(self, run_dir: Path, project: str, config: Mapping[str, Any]) -> None:
        # trackio reads TRACKIO_DIR once, when first imported: a later run in the same process
        # (a pipeline's next stage) logs where the first one did; trackio prints where.
        os.environ.setdefault("TRACKIO_DIR", str(run_dir / "trackio"))
        import trackio

        self.run = trackio.init(project=project, name=run_dir.name, config=dict(config))
        self.table = trackio.Table


class RunLogger:
    """Append metrics and samples to a run directory and send them to the trackers of
    ``report_to`` (``tensorboard``, ``wandb``, ``trackio``); ``config`` (the resolved run config)
    goes to wandb and trackio, under ``project``.

    ``resume_step=k`` first cuts both JSON-lines files back to steps ``<= k`` (and tells
    TensorBoard to purge later steps), so a run resumed from checkpoint ``k`` ends with the
    same files as one that was never interrupted.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        report_to: Sequence[str] = ("tensorboard",),
        resume_step: int | None = None,
        config: Mapping[str, Any] | None = None,
        project: str = "reasonrl",
    ) -> None:
        check_trackers(report_to)
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
        self._trackers: list[_TensorBoard | _Wandb | _Trackio] = []
        for name in dict.fromkeys(report_to):
            if name == "tensorboard":
                self._trackers.append(_TensorBoard(self.run_dir, resume_step))
            elif name == "wandb":
                self._trackers.append(_Wandb(self.run_dir, project, config or {}))
            elif name == "trackio":
                self._trackers.append(_Trackio(self.run_dir, project, config or {}))
            else:
                raise ValueError(f"unknown tracker {name!r}: tensorboard, wandb or trackio")

    @classmethod
    def for_run(cls, cfg: RunConfig, run_dir: Path, resume_step: int | None) -> RunLogger:
        """The logger of a stage run with config ``cfg``: its trackers, project and config."""
        return cls(
            run_dir,
            report_to=cfg.log.report_to,
            resume_step=resume_step,
            config=cfg.model_dump(mode="json"),
            project=cfg.log.project,
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write one ``{"step": step, **metrics}`` line; every finite number goes to the
        trackers too."""
        record = {"step": step, **_jsonable(metrics)}
        self._metrics.write(_dumps(record) + "\n")
        self._metrics.flush()
        scalars = {
            key: value
            for key, value in record.items()
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool)
        }
        for tracker in self._trackers:
            tracker.log(step, scalars)

    def log_samples(self, step: int, samples: Iterable[Mapping[str, Any]]) -> None:
        """Append one ``{"step": step, **sample}`` line per sample to ``samples.jsonl``; the
        trackers get them as one table (nested keys flattened: ``rewards/answer``)."""
        if self._samples is None:
            self._samples = self.samples_path.open("a", encoding="utf-8", buffering=1)
        rows = []
        for sample in samples:
            self._samples.write(_dumps({"step": step, **sample}) + "\n")
            rows.append(_flat_row(_jsonable(sample)))
        self._samples.flush()
        if not rows or not self._trackers:
            return
        columns = list(dict.fromkeys(key for row in rows for key in row))
        table = [[row.get(c) for c in columns] for row in rows]
        for tracker in self._trackers:
            tracker.log_table(step, columns, table)

    def close(self) -> None:
        """Flush and close the files and the trackers. Safe to call twice."""
        self._metrics.close()
        if self._samples is not None:
            self._samples.close()
        while self._trackers:
            self._trackers.pop().close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SilentLogger(RunLogger):
    """The logger of every rank but 0 under several processes: it writes nothing (rank 0 logs
    the step's metrics, already reduced over the ranks)."""

    def __init__(self) -> None:  # no files, no trackers
        pass

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def log_samples(self, step: int, samples: Iterable[Mapping[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


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
