"""Checkpoints: ``checkpoints/step-N/`` holds the model in HF ``save_pretrained`` format (plus the
tokenizer) and ``trainer_state.pt`` with the optimizer, scheduler, RNG states and data position.

A checkpoint is written to a temporary directory and renamed into place, so a run killed while
saving never leaves a half-written ``step-N`` that ``--resume`` would pick up.
"""

from __future__ import annotations

import random
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
    rng: dict[str, Any] | None = None,
    save_more: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``checkpoints/step-{step}`` and delete all but the newest ``keep`` checkpoints.

    ``rng`` is the RNG state to restore on resume: the state at the start of step ``step + 1``
    (by default the current one). A trainer interrupted mid-step passes the state it saved
    when that step began, so the resumed run redraws the same samples. ``save_more(dir)`` writes
    anything else (a critic) into the checkpoint before it is moved into place.
    """
    root = checkpoint_dir(run_dir)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng if rng is not None else rng_state(),
            "extra": extra or {},
        },
        tmp / STATE_FILE,
    )
    if save_more is not None:
        save_more(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_trainer_state(
    path: Path, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[int, dict[str, Any]]:
    """Restore optimizer, scheduler and RNG from a checkpoint; returns (step, extra)."""
    state = torch.load(Path(path) / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["step"], state["extra"]


@contextmanager
def ignoring_interrupts() -> Iterator[None]:
    """Ctrl-C is ignored inside (the checkpoint written on Ctrl-C is not cut short by a second
    one); the previous handler is restored afterwards."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
