"""RunLogger, read_jsonl and training_progress: files written, TensorBoard, wandb and trackio
read back, resume."""

import io
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
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


# --------------------------------------------------------------------------- wandb and trackio

TRACKED = [
    "rl.steps=3",
    "rl.prompts_per_step=4",
    "rl.completions_per_prompt=4",
    "rl.micro_batch_completions=16",
    "rollout.max_new_tokens=16",
    "eval.limit=8",
    "eval.k=0",
    "eval.sampling.max_new_tokens=16",
    "log.samples_every=2",
    "log.samples_per_log=2",
    "log.checkpoint_every=0",
    "log.report_to=[tensorboard,wandb,trackio]",
    "model.device=cpu",
    "task.train_size=100",
    "task.eval_size=8",
]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-step quickstart logging to every tracker, run as a user would: the CLI in a fresh
    process with no network, no wandb login (HOME without a .netrc) and no tracker settings."""
    home = tmp_path_factory.mktemp("home")
    run_dir = home / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    env.update(HOME=str(home), NETRC=str(home / ".netrc"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "reasonrl", "quickstart", *TRACKED, "--out", str(run_dir)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def _expected(run_dir: Path) -> dict[int, dict[str, float]]:
    """metrics.jsonl as step → every finite number logged at that step (lines merged)."""
    steps: dict[int, dict[str, float]] = {}
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        numbers = {k: v for k, v in record.items() if k != "step" and v is not None}
        steps.setdefault(record["step"], {}).update(numbers)
    return steps


def _flat(sample: dict, prefix: str = "") -> dict:
    row = {}
    for key, value in sample.items():
        if isinstance(value, dict):
            row.update(_flat(value, f"{prefix}{key}/"))
        else:
            row[prefix + key] = value
    return row


def _expected_tables(run_dir: Path) -> dict[int, list[dict]]:
    """samples.jsonl as step → the rows of that step's table (nested keys flattened)."""
    tables: dict[int, list[dict]] = {}
    for sample in read_jsonl(run_dir / "samples.jsonl"):
        step = sample.pop("step")
        tables.setdefault(step, []).append(_flat(sample))
    return tables


def _own(config: dict) -> dict:
    """A tracker's copy of the run config without the keys the tracker adds (``_wandb``)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _wandb_records(path: Path) -> list:
    """The records of a wandb transaction log (``run-*.wandb``): wandb 0.31 has no Python
    reader of its own any more (wandb-core reads them), so this one follows its format — a
    7-byte file header, then leveldb-log chunks in 32 KiB blocks, each a piece of a protobuf
    ``Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_logs_what_metrics_jsonl_holds(tracked_run: Path) -> None:
    (log,) = tracked_run.glob("wandb/offline-run-*/run-*.wandb")  # offline, in the run dir
    history: dict[int, dict] = {}
    config = {}
    for record in _wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = history.setdefault(record.history.step.num, {})
            for item in record.history.item:
                *parents, key = [item.key] if item.key else item.nested_key
                if key.startswith("_") and not parents:  # wandb's own _step, _runtime, ...
                    continue
                node = row
                for parent in parents:  # a table is a reference: {"samples": {"path": ...}}
                    node = node.setdefault(parent, {})
                node[key] = json.loads(item.value_json)
        elif kind == "run":
            assert record.run.display_name == tracked_run.name
            assert record.run.project == "reasonrl"
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}

    tables = {step: row.pop("samples") for step, row in history.items() if "samples" in row}
    assert {step: row for step, row in history.items() if row} == _expected(tracked_run)
    assert _own(config) == yaml.safe_load((tracked_run / "config.yaml").read_text())
    assert config["log"]["report_to"] == ["tensorboard", "wandb", "trackio"]
    expected_tables = _expected_tables(tracked_run)
    assert sorted(tables) == sorted(expected_tables) == [1, 2]
    for step, ref in tables.items():
        table = json.loads((log.parent / "files" / ref["path"]).read_text())
        rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
        assert rows == expected_tables[step]
        assert {"prompt", "gold_answer", "rewards/answer", "tokens/prompt"} <= set(rows[0])


def test_trackio_run_logs_what_metrics_jsonl_holds(tracked_run: Path) -> None:
    # Read back through trackio's own storage, in a process that points it at the run's
    # directory (trackio fixes its directory when first imported).
    read = (
        "import json, sys\n"
        "from trackio.sqlite_storage import SQLiteStorage as S\n"
        "run = ('reasonrl', sys.argv[1])\n"
        "out = {'logs': S.get_logs(*run), 'config': S.get_run_config(*run)}\n"
        "print(json.dumps(out, default=str))\n"
    )
    env = {**os.environ, "TRACKIO_DIR": str(tracked_run / "trackio")}
    done = subprocess.run(
        [sys.executable, "-c", read, tracked_run.name],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    logged = json.loads(done.stdout.splitlines()[-1])
    steps: dict[int, dict] = {}
    tables: dict[int, list[dict]] = {}
    for entry in logged["logs"]:
        step = entry.pop("step")
        entry.pop("timestamp")
        if "samples" in entry:
            tables[step] = entry.pop("samples")["_value"]
        steps.setdefault(step, {}).update(entry)
    assert {step: row for step, row in steps.items() if row} == _expected(tracked_run)
    assert tables == _expected_tables(tracked_run)
    assert _own(logged["config"]) == yaml.safe_load((tracked_run / "config.yaml").read_text())
