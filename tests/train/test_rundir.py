"""Run directories: one live run in each, --overwrite of runs only, read-only and full disks.

The concurrent-run, --overwrite and disk tests start real ``python -m reasonrl run`` processes;
the disk tests mount a small or read-only tmpfs in a user and mount namespace (``unshare``), which
works as root and as an ordinary user where user namespaces are allowed.
"""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from reasonrl.config import ConfigError, load_config
from reasonrl.models.loading import save_torch
from reasonrl.pipeline import run_pipeline
from reasonrl.train.checkpoint import STATE_FILE, list_checkpoints
from reasonrl.train.run import run
from reasonrl.train.rundir import LOCK_FILE, locked, write_error

QUICK = [
    "rl.prompts_per_step=2",
    "rl.completions_per_prompt=4",
    "rl.micro_batch_completions=8",
    "rollout.max_new_tokens=16",
    "task.train_size=50",
    "task.eval_size=8",
    "eval.before=false",
    "eval.after=false",
    "log.tensorboard=false",
]
BUNDLED = Path(__file__).parents[2] / "reasonrl" / "assets" / "tiny-arith"


def _reasonrl(out, *args, wrap=()):
    cmd = [*wrap, sys.executable, "-m", "reasonrl", "run", "quickstart", *QUICK, *args]
    env = os.environ | {"COLUMNS": "250"}  # count the message's lines, not the terminal's
    return subprocess.Popen(
        [*cmd, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, " ".join(out.split()), err


def _error(err):
    """The error message at the end of stderr (after any progress bars), one line per line."""
    return err[err.rindex("error:") :].strip().splitlines()


def _wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)


def test_a_second_run_is_refused_while_the_first_lives_and_not_after_it_died(tmp_path):
    out = tmp_path / "run"
    first = _reasonrl(out, "rl.steps=100000", "log.checkpoint_every=0")
    try:
        _wait_for(out / "config.yaml", first)
        # Both at once: a plain second run, and one that would replace the first's directory.
        others = [_reasonrl(out, "rl.steps=1"), _reasonrl(out, "rl.steps=1", "--overwrite")]
        for proc in others:
            code, _, err = _finish(proc, timeout=120)
            assert code == 2, err
            assert f"in use by another reasonrl run (PID {first.pid})" in " ".join(err.split())
            assert len(_error(err)) <= 2 and "Traceback" not in err
        assert first.poll() is None  # still running, its directory untouched
        assert yaml.safe_load((out / "config.yaml").read_text())["rl"]["steps"] == 100000
    finally:
        first.kill()  # SIGKILL: no clean-up, its lock file stays behind
        first.communicate()
    assert (out / LOCK_FILE).read_text().strip() == str(first.pid)
    # The dead run's lock is stale: --overwrite takes the directory and says what it removed.
    code, stdout, err = _finish(_reasonrl(out, "rl.steps=1", "--overwrite"))
    assert code == 0, err
    assert f"--overwrite: removed the earlier run in {out}: config.yaml" in stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["rl"]["steps"] == 1
    assert [m["step"] for m in map(json.loads, (out / "metrics.jsonl").open())] == [1]


def test_a_second_run_is_refused_before_the_slow_imports(tmp_path):
    # the refusal needs neither torch nor transformers (seconds of imports): it comes at once
    driver = (
        "import sys\n"
        "from reasonrl.cli import app\n"
        "try:\n"
        "    app(sys.argv[1:])\n"
        "finally:\n"
        "    print('torch imported:', 'torch' in sys.modules)\n"
    )
    out = tmp_path / "run"
    for command in (["quickstart"], ["run", "qwq-style"]):
        with locked(out):
            proc = subprocess.run(
                [sys.executable, "-c", driver, *command, "--out", str(out)],
                capture_output=True,
                text=True,
                timeout=120,
            )
        assert proc.returncode == 2, proc.stderr
        assert f"in use by another reasonrl run (PID {os.getpid()})" in " ".join(
            proc.stderr.split()
        )
        assert "torch imported: False" in proc.stdout


def test_overwrite_refuses_a_directory_that_holds_no_run(tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.yaml").write_text("database: {host: localhost}\n")  # someone else's config
    code, _, err = _finish(_reasonrl(out, "rl.steps=1", "--overwrite"), timeout=120)
    assert code == 2, err
    assert f"{out} does not hold a reasonrl run" in " ".join(err.split())
    assert len(_error(err)) <= 2 and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.txt"]


def test_a_fresh_run_refuses_a_directory_of_other_files(tmp_path):
    cfg = load_config(None, [*QUICK, "rl.steps=1"])
    recipe = tmp_path / "pipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "pipe", "stages": [{"name": "a", "stage": "sft"}]}))
    for name, start in [
        ("run", lambda out: run(cfg, out)),
        ("pipe", lambda out: run_pipeline(recipe, [], out)),
    ]:
        out = tmp_path / name
        out.mkdir()
        (out / "config.yaml").write_text("database: {host: localhost}\n")  # the user's own
        with pytest.raises(ConfigError, match=re.escape(f"{out} is not empty (config.yaml)")):
            start(out)
        assert (out / "config.yaml").read_text() == "database: {host: localhost}\n"
        assert [p.name for p in out.iterdir()] == ["config.yaml"]  # nor a lock file left


def test_the_rm_stage_and_a_pipeline_hold_the_lock_too(tmp_path):
    rm = load_config("tiny-rm", ["rm.steps=1", "log.tensorboard=false"])
    recipe = tmp_path / "pipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "pipe", "stages": [{"name": "a", "stage": "sft"}]}))
    with locked(tmp_path / "rm"), locked(tmp_path / "pipe"):
        held = f"is in use by another reasonrl run (PID {os.getpid()})"
        for path, start in [
            ("rm", lambda: run(rm, tmp_path / "rm")),
            ("pipe", lambda: run_pipeline(recipe, [], tmp_path / "pipe")),
        ]:
            with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / path} {held}")):
                start()
            assert [p.name for p in (tmp_path / path).iterdir()] == [LOCK_FILE]  # untouched


def _namespace(tmp_path, mount_options):
    """A command prefix that runs the rest in a new user and mount namespace with a tmpfs
    (``mount_options``) on tmp_path/disk, or a skip naming why that cannot be done here."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f'mount -t tmpfs -o {mount_options} tmpfs "{disk}" && exec "$@"'
    wrap = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"]
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here: cannot mount a small or read-only disk without root")
    probe = subprocess.run([*wrap, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces are not allowed here: {probe.stderr.strip()}")
    return disk, wrap


def test_a_read_only_out_is_one_line_naming_it(tmp_path):
    disk, wrap = _namespace(tmp_path, "ro")
    out = disk / "run"
    code, _, err = _finish(_reasonrl(out, "rl.steps=1", wrap=wrap), timeout=120)
    assert code == 2, err
    assert f"cannot write to the run directory {out} (Read-only file system)" in " ".join(
        err.split()
    )
    assert "--out DIR" in err and len(_error(err)) <= 2 and "Traceback" not in err


def test_a_full_disk_names_the_last_intact_checkpoint(tmp_path):
    # room for one checkpoint (weights, two Adam moments), not two: the second save fails
    checkpoint = 3 * (BUNDLED / "model.safetensors").stat().st_size
    disk, wrap = _namespace(tmp_path, f"size={int(1.5 * checkpoint)}")
    out, kept = disk / "run", tmp_path / "kept"
    # copy what the run left out of the tmpfs before its namespace (and the mount) goes
    copy = f'"$@"; code=$?; cp -a "{out}" "{kept}"; exit $code'
    wrap = [*wrap, "sh", "-c", copy, "sh"]
    steps = ["rl.steps=4", "log.checkpoint_every=1"]
    code, _, err = _finish(_reasonrl(out, *steps, wrap=wrap))
    assert code == 2, err
    message = " ".join(err.split())
    assert f"the disk is full: writing under {out}" in message or (
        f"the disk is full: writing {out}/" in message
    )
    assert f"the last complete checkpoint, {out}/checkpoints/step-1, is intact" in message
    assert "--resume" in message and "Traceback" not in err and len(_error(err)) <= 2
    # the half-written step-2 is gone; step-1 is whole
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["step-1"]
    (step,) = list_checkpoints(kept)
    assert torch.load(step / STATE_FILE, weights_only=False)["step"] == 1


def test_write_errors_are_recognised_whatever_library_raised_them(tmp_path):
    # a pipeline: the last complete checkpoint is the latest stage's (step-1 of 1-b), not a
    # half-written one or an earlier stage's
    for ckpt in ("0-a/checkpoints/step-4", "1-b/checkpoints/step-1"):
        (tmp_path / ckpt).mkdir(parents=True)
        (tmp_path / ckpt / STATE_FILE).write_bytes(b"")
    (tmp_path / "1-b/checkpoints/.tmp-step-2").mkdir()
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a Python write raises
    torch_save = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    torch_save.__context__ = full  # torch.save to a Python file leaves the OSError as context
    # safetensors' (Rust's) message has no errno attribute, only "(os error 28)"
    rust = RuntimeError("Error while serializing: I/O error: No space left (os error 28)")
    for error in (full, torch_save, rust):
        message = write_error(tmp_path, error)
        assert message.startswith(f"the disk is full: writing under {tmp_path} failed")
        assert f"last complete checkpoint, {tmp_path}/1-b/checkpoints/step-1, is intact" in message
    read_only = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "x"))
    assert f"cannot write to the run directory {tmp_path}" in write_error(tmp_path, read_only)
    elsewhere = PermissionError(errno.EACCES, "Permission denied", "/root/model")
    assert write_error(tmp_path, elsewhere) is None  # not the run directory's fault
    assert write_error(tmp_path, ValueError("bad")) is None


def test_torch_files_fail_as_os_errors_naming_the_file(tmp_path):
    # torch.save(obj, path) raises a bare RuntimeError (no errno, no file name), which the run
    # could not tell from a bug: the checkpoint, critic and value-head files go through save_torch
    target = tmp_path / "gone" / "value_head.pt"
    with pytest.raises(OSError) as e:
        save_torch({"w": torch.zeros(2)}, target)
    assert (e.value.errno, e.value.filename) == (errno.ENOENT, str(target))
