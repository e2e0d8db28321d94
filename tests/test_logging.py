"""RunLogger, read_jsonl and training_progress: files written, TensorBoard read back, resume."""

import io
import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from reasonrl.logging import RunLogger, read_jsonl, training_progress


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_metrics_and_samples_round_trip(tmp_path: Path) -> None:
    with RunLogger(tmp_path, report_to=()) as logger:
        logger.log(0, {"reward/mean": 0.25, "loss/policy": -1.5})
        logger.log(1, {"reward/mean": 0.5, "perf/step_s": torch.tensor(2.0)})
        logger.log_samples(1, [{"prompt": "2+2?", "completion": "4", "reward": 1.0}])
        logger.log_samples(1, [{"prompt": "é", "completion": "", "reward": 0.0}])

    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 0, "reward/mean": 0.25, "loss/policy": -1.5},
        {"step": 1, "reward/mean": 0.5, "perf/step_s": 2.0},
    ]
    assert read_jsonl(tmp_path / "samples.jsonl") == [
        {"step": 1, "prompt": "2+2?", "completion": "4", "reward": 1.0},
        {"step": 1, "prompt": "é", "completion": "", "reward": 0.0},
    ]


def test_lines_are_on_disk_before_close(tmp_path: Path) -> None:
    # A run killed with Ctrl-C never reaches close(); every logged step must already be there.
    logger = RunLogger(tmp_path, report_to=())
    logger.log(3, {"reward/mean": 1.0})
    logger.log_samples(3, [{"completion": "x"}])
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 3, "reward/mean": 1.0}]
    assert read_jsonl(tmp_path / "samples.jsonl") == [{"step": 3, "completion": "x"}]
    logger.close()


def test_nan_and_inf_are_written_as_null(tmp_path: Path) -> None:
    with RunLogger(tmp_path, report_to=()) as logger:
        logger.log(0, {"kl/mean": float("nan"), "loss/policy": float("inf"), "reward/mean": 0.1})
        logger.log_samples(0, [{"rewards": [1.0, float("nan")]}])

    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text

    def reject(token: str) -> None:
        raise AssertionError(f"invalid JSON token {token}")

    # Strict parse: the stdlib would otherwise silently accept NaN.
    assert json.loads(text, parse_constant=reject) == {
        "step": 0,
        "kl/mean": None,
        "loss/policy": None,
        "reward/mean": 0.1,
    }
    samples = (tmp_path / "samples.jsonl").read_text()
    assert json.loads(samples, parse_constant=reject)["rewards"] == [1.0, None]


def test_tensorboard_scalars_are_readable(tmp_path: Path) -> None:
    with RunLogger(tmp_path) as logger:
        logger.log(0, {"reward/mean": 0.25, "kl/mean": float("nan"), "note": "text"})
        logger.log(1, {"reward/mean": 0.75, "kl/mean": 0.01})

    assert list(tmp_path.glob("events.out.tfevents.*")), "no event file in the run dir"
    assert _scalars(tmp_path, "reward/mean") == [(0, 0.25), (1, 0.75)]
    # The NaN at step 0 is skipped, not written as a NaN scalar.
    (step, value), *rest = _scalars(tmp_path, "kl/mean")
    assert (step, rest) == (1, []) and value == pytest.approx(0.01)
    assert _scalars(tmp_path, "note") == []


def _run(run_dir: Path, steps: range, *, resume_step: int | None = None) -> None:
    with RunLogger(run_dir, resume_step=resume_step) as logger:
        for step in steps:
            logger.log(step, {"reward/mean": step / 10})
            logger.log_samples(step, [{"completion": f"c{step}a"}, {"completion": f"c{step}b"}])


def test_resume_truncates_to_checkpoint_step(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(straight, range(6))

    _run(resumed, range(5))  # crashed after step 4; the last checkpoint was step 2
    with (resumed / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "reward/me')  # a line cut short by the crash
    _run(resumed, range(3, 6), resume_step=2)

    for name in ("metrics.jsonl", "samples.jsonl"):
        assert (resumed / name).read_text() == (straight / name).read_text()
    steps = [r["step"] for r in read_jsonl(resumed / "metrics.jsonl")]
    assert steps == list(range(6))
    # TensorBoard is told to purge steps after the checkpoint, so no step appears twice.
    assert [s for s, _ in _scalars(resumed, "reward/mean")] == list(range(6))


def test_resume_keeps_lines_without_integer_step(tmp_path: Path) -> None:
    with RunLogger(tmp_path, report_to=()) as logger:
        logger.log(0, {"reward/mean": 0.0})
        logger.log(5, {"reward/mean": 0.5})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"phase": "before", "eval/accuracy": 0.4}) + "\n")
        f.write(json.dumps({"step": "final", "eval/accuracy": 0.6}) + "\n")

    RunLogger(tmp_path, report_to=(), resume_step=2).close()

    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 0, "reward/mean": 0.0},
        {"phase": "before", "eval/accuracy": 0.4},
        {"step": "final", "eval/accuracy": 0.6},
    ]


def test_read_jsonl_drops_only_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"step": 0}\n\n{"step": 1}\n{"step": 2, "a')
    assert read_jsonl(path) == [{"step": 0}, {"step": 1}]

    path.write_text('{"step": 0}\n{"ste\n{"step": 2}\n')
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(path)


def test_progress_on_a_non_terminal_console() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=150)
    assert not console.is_terminal
    with training_progress(10, "grpo", start=4, console=console) as progress:
        for step in range(5, 11):
            progress.update(step, reward=0.53333, kl=0.0021234, loss=math.nan)

    out = buffer.getvalue()
    assert "grpo" in out
    assert "10/10" in out
    assert "reward 0.533  kl 0.00212  loss nan" in out


def test_progress_with_default_console_under_capture(capsys: pytest.CaptureFixture) -> None:
    # Pytest's captured stdout is not a tty, like a job's log file.
    with training_progress(3, "sft") as progress:
        progress.update(1, loss=2.0)
        progress.update(3, loss=1.0)
    assert "3/3" in capsys.readouterr().out
