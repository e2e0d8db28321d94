"""Checkpoints: ``checkpoints/step-N/`` holds the model in HF ``save_pretrained`` format (plus the
tokenizer), ``trainer_state.pt`` with the scheduler, RNG states and data position (the step), and
``train_state/``: the optimizer's state, keyed by parameter name, as a
``torch.distributed.checkpoint`` (DCP) directory (the weights are the HF model's, not twice).

Under several ranks rank 0 writes the HF model (gathered from the shards by
``full_model_state``), the tokenizer and ``trainer_state.pt``; every rank writes its part of
``train_state/``. DCP re-cuts the state to the world that reads it, and the resumed model is
loaded whole from the HF files, then wrapped, so a checkpoint written on N ranks resumes on M
(DDP, FSDP2 or one process). A checkpoint of the earlier layout (the
optimizer's ``state_dict`` inside ``trainer_state.pt``, no ``train_state/``) still resumes, on
one process or under DDP.

A checkpoint is written to a temporary directory and renamed into place (by rank 0, after every
rank has written), so a run killed while saving never leaves a half-written ``step-N`` that
``--resume`` would pick up.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.api import CheckpointException

from reasonrl.config import LogConfig
from reasonrl.distributed import (
    Ranks,
    barrier,
    full_model_state,
    is_sharded,
    load_train_state,
    save_train_state,
    unwrap,
)
from reasonrl.models.loading import save_torch

STATE_FILE = "trainer_state.pt"
DCP_DIR = "train_state"  # the optimizer, every rank's shards (torch.distributed.checkpoint)


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
    ranks: Ranks = Ranks(),
) -> Path:
    """Write ``checkpoints/step-{step}`` and delete all but the newest ``keep`` checkpoints.
    Every rank calls it (the gather and the DCP write are collectives).

    ``rng`` is the RNG state to restore on resume: the state at the start of step ``step + 1``
    (by default the current one). A trainer interrupted mid-step passes the state it saved
    when that step began, so the resumed run redraws the same samples. ``save_more(dir)`` writes
    anything else (a critic) into the checkpoint before it is moved into place.
    """
    root = checkpoint_dir(run_dir)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if ranks.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(ranks)
    try:
        # FSDP2: the whole model gathered on rank 0; else rank 0's model (or replica) is whole
        whole = {"state_dict": full_model_state(model, ranks)} if is_sharded(model) else {}
        _save_optimizer(tmp / DCP_DIR, model, optimizer)
        if ranks.is_main:
            unwrap(model).save_pretrained(tmp, **whole)
            tokenizer.save_pretrained(tmp)
            state = {
                "step": step,
                "scheduler": scheduler.state_dict(),
                "rng": rng if rng is not None else rng_state(),
                "extra": extra or {},
            }
            save_torch(state, tmp / STATE_FILE)
        if save_more is not None:  # on every rank: a critic's DCP write is collective too
            save_more(tmp)
        barrier(ranks)
    except BaseException:
        if ranks.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # a half-written checkpoint only takes space
        raise
    if ranks.is_main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    barrier(ranks)  # no rank goes on (or resumes) before step-N is in place
    return final


def _save_optimizer(path: Path, model: Any, optimizer: torch.optim.Optimizer) -> None:
    try:
        save_train_state(path, model, optimizer, model_state=False)
    except (RuntimeError, CheckpointException) as e:
        # DCP writes through torch's own file writer, which reports a full disk as a bare
        # RuntimeError ("unexpected pos", inside DCP's CheckpointException): raise it as the
        # OSError it is, for the run's message
        if shutil.disk_usage(path.parent).free < 1 << 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise


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
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[int, dict[str, Any]]:
    """Restore the optimizer of ``model`` (from ``train_state/``, on any number of ranks; a
    checkpoint of the earlier layout: from ``trainer_state.pt``), scheduler and RNG from a
    checkpoint; returns (step, extra). The model's weights come from the checkpoint's HF files
    (the caller loads them). Every rank calls it."""
    state = torch.load(Path(path) / STATE_FILE, weights_only=False)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    else:
        load_train_state(Path(path) / DCP_DIR, model, optimizer, model_state=False)
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


@contextmanager
def one_interrupt() -> Iterator[None]:
    """For a process that ends on Ctrl-C (the command line): the first SIGINT inside raises
    KeyboardInterrupt, and every later one is ignored, so that a second Ctrl-C cannot cut short
    the checkpoint and the message that answer the first. After an interrupt SIGINT stays
    ignored on the way out; otherwise the previous handler comes back. A process that was
    started with SIGINT ignored (``nohup``, ``cmd &``) keeps it ignored."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):
        yield
        return
    interrupted = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if interrupted:
            os.write(2, b"\nalready stopping: saving progress, please wait\n")
            return
        interrupted = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN if interrupted else previous)


def optimizer_step(
    params: Any, optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float
) -> tuple[float, float]:
    """Clip the gradients of ``params``, step the optimizer and the schedule, clear the
    gradients; returns (the gradient norm before clipping, the learning rate just used)."""
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr


class Checkpointer:
    """Where a training loop stands, and its checkpoints: ``done`` steps, and the RNG state that
    a resume from step ``done`` must start with (taken when the step finished, so a checkpoint
    written on Ctrl-C mid-step redraws that step's samples).

    A loop calls :meth:`step_done` after each optimizer step and :meth:`end_of_step` last in
    it, inside ``with checkpointer.on_interrupt():``, which writes a checkpoint on Ctrl-C.
    ``extra`` and ``save_more`` go to :func:`save_checkpoint`.
    """

    def __init__(
        self,
        run_dir: Path,
        model: Any,
        tokenizer: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        *,
        start: int,
        every: int,
        keep: int,
        extra: dict[str, Any] | None = None,
        save_more: Callable[[Path], None] | None = None,
        ranks: Ranks = Ranks(),
    ) -> None:
        self.run_dir, self.model, self.tokenizer, self.ranks = run_dir, model, tokenizer, ranks
        self.optimizer, self.scheduler = optimizer, scheduler
        self.every, self.keep, self.extra, self.save_more = every, keep, extra, save_more
        self.done = start
        self.rng = rng_state()

    @classmethod
    def for_run(
        cls,
        run_dir: Path,
        model: Any,
        tokenizer: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        log: LogConfig,
        resume_from: Path | None,
        save_more: Callable[[Path], None] | None = None,
        ranks: Ranks = Ranks(),
    ) -> tuple[Checkpointer, dict[str, Any]]:
        """A loop's checkpointer, after restoring model, optimizer, scheduler and RNG from
        ``resume_from`` when there is one; returns it with that checkpoint's ``extra``.
        Every rank calls ``save_more`` (a critic writes its DCP part)."""
        start, extra = 0, {}
        if resume_from is not None:
            start, extra = load_trainer_state(resume_from, model, optimizer, scheduler)
        ckpt = cls(
            run_dir,
            model,
            tokenizer,
            optimizer,
            scheduler,
            start=start,
            every=log.checkpoint_every,
            keep=log.keep_checkpoints,
            save_more=save_more,
            ranks=ranks,
        )
        return ckpt, extra

    def step_done(self, step: int) -> None:
        self.done = step + 1
        self.rng = rng_state()

    def save(self) -> Path:
        return save_checkpoint(
            self.run_dir,
            self.done,
            self.model,
            self.tokenizer,
            self.optimizer,
            self.scheduler,
            extra=self.extra,
            keep=self.keep,
            rng=self.rng,
            save_more=self.save_more,
            ranks=self.ranks,
        )

    def end_of_step(self, on_step: Callable[[int], None] | None) -> None:
        """The caller's per-step hook, then a checkpoint every ``every`` steps (0: never)."""
        if on_step is not None:
            on_step(self.done)
        if self.every and self.done % self.every == 0:
            self.save()

    @contextmanager
    def on_interrupt(self) -> Iterator[None]:
        """Ctrl-C inside writes a checkpoint (itself not interruptible), then propagates."""
        try:
            yield
        except KeyboardInterrupt:
            with ignoring_interrupts():
                self.save()
            raise
