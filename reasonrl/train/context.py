"""One ``RunContext`` for every stage (sft, rm, dpo, rl), and the loop skeleton they share.

How to run: a stage is never started from here but by ``reasonrl run RECIPE`` (``reasonrl
quickstart`` for the bundled CPU example; on one GPU the same command, ``model.device=auto``
picks CUDA), which lands in :func:`reasonrl.train.run.run`. That takes the run directory's lock,
then ``RunContext.open`` checks the directory (``--resume`` finds its checkpoint,
``--overwrite`` clears it), saves ``config.yaml``, prints the sizes, seeds, picks the device and
opens the ``RunLogger``; the stage builds its model and data and trains on the context;
``RunContext.finish`` writes ``summary.json`` and ``report.html``. In a test, build one
directly: ``RunContext(cfg, run_dir, logger)`` is a fresh run on the CPU.

A policy stage hands the context its held-out problems (``use_held_out``): they give the
"before" evaluation (saved as ``eval_before.json`` and reused while it covers the problems
``eval.limit`` asks for), the quick accuracy every ``eval.every`` steps and the "after" one.
:class:`TrainLoop` is the optimizer, warmup-cosine schedule, checkpointer, progress bar,
logging cadence and per-step hook of the sft, dpo and rm loops; a stage gives it one function
that does a step's forward and backward passes.

Leaves out: several processes (``ranks`` is rank 0 of 1 for now).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from reasonrl.config import ConfigError, EvalConfig, RunConfig, dump_config
from reasonrl.distributed import Ranks
from reasonrl.eval import eval_size, evaluate
from reasonrl.eval.evaluate import reward_scorers
from reasonrl.eval.summary import print_summary
from reasonrl.logging import METRICS_FILE, RunLogger, training_progress
from reasonrl.models import pick_device
from reasonrl.rollout.base import RolloutEngine
from reasonrl.tasks import Sample
from reasonrl.train.checkpoint import (
    Checkpointer,
    checkpoint_dir,
    latest_checkpoint,
    optimizer_step,
)
from reasonrl.train.optim import build_optimizer, warmup_cosine
from reasonrl.train.rundir import holds_run, prepare_dir

SUMMARY_FILE = "summary.json"
BEFORE_FILE = "eval_before.json"
MODEL_DIR = "model"


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, console: Console) -> Path | None:
    """Refuse to clobber an earlier run unless asked; ``overwrite`` removes it first (only a
    reasonrl run). Returns the checkpoint to resume from (None for a fresh run)."""
    has_run = (
        holds_run(run_dir) or (run_dir / METRICS_FILE).exists() or checkpoint_dir(run_dir).exists()
    )
    prepare_dir(run_dir, has_run, resume, overwrite, console, inputs=[BEFORE_FILE])
    resume_from = latest_checkpoint(run_dir) if resume else None
    if resume and resume_from is None:
        # Training from step 0 again would append a second copy of the first steps' metrics.
        raise ConfigError(
            f"{run_dir} holds no checkpoint to resume from (it stopped before the first one): "
            "--overwrite runs it again from the start"
        )
    return resume_from


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _print_sizes(console: Console, cfg: RunConfig, run_dir: Path) -> None:
    table = Table(title=f"{cfg.name}: {cfg.stage} → {run_dir}", show_header=False)
    for key, value in cfg.derived_sizes().items():
        table.add_row(key, str(value))
    console.print(table)


@dataclass(frozen=True)
class HeldOut:
    """A policy stage's held-out problems, rendered, and the engine that answers them."""

    engine: RolloutEngine
    prompts: list[str]
    samples: list[Sample]


@dataclass
class RunContext:
    """What a stage runs on: the resolved config, the run directory, the device, where this
    process sits among the ranks, the open logger, the checkpoint to resume from, the
    held-out evaluation (policy stages) and the hook called after every optimizer step."""

    cfg: RunConfig
    run_dir: Path
    logger: RunLogger
    console: Console = field(default_factory=Console)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    resume_from: Path | None = None
    ranks: Ranks = Ranks()
    held_out: HeldOut | None = None
    on_step: Callable[[int], None] | None = None  # after each step, before its checkpoint
    started: float = field(default_factory=time.time)

    @classmethod
    @contextmanager
    def open(
        cls,
        cfg: RunConfig,
        run_dir: Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        console: Console | None = None,
    ) -> Iterator[RunContext]:
        """What every stage does first: the run directory (checked, or its checkpoint found),
        the saved config.yaml, the sizes table, the seed, the device, the logger (closed on
        leaving). The caller holds the directory's lock (``rundir.locked``)."""
        started = time.time()
        console = console or Console()
        resume_from = prepare_run_dir(run_dir, resume, overwrite, console)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        _print_sizes(console, cfg, run_dir)
        seed_everything(cfg.seed)
        device = pick_device(cfg.model.device)
        start_step = int(resume_from.name.split("-")[1]) if resume_from else None
        with RunLogger.for_run(cfg, run_dir, start_step) as logger:
            yield cls(cfg, run_dir, logger, console, device, resume_from, started=started)

    @property
    def resumed(self) -> bool:
        return self.resume_from is not None

    def use_held_out(self, held_out: HeldOut) -> None:
        """Evaluate on ``held_out`` before and after, and every ``eval.every`` steps."""
        self.held_out = held_out
        if self.cfg.eval.every:
            self.on_step = self._quick_eval

    def _quick_eval(self, step: int) -> None:
        if step % self.cfg.eval.every == 0:
            ev = self.cfg.eval.model_copy(update={"k": 0, "limit": self.cfg.eval.every_limit})
            quick = self._evaluate(ev)
            self.logger.log(step, {"eval/accuracy": quick["accuracy"]})

    def _evaluate(self, ev: EvalConfig, scorers: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.held_out is not None
        h = self.held_out
        return evaluate(h.engine, h.prompts, h.samples, ev, scorers)

    def _full_eval(self, tag: str) -> dict[str, Any]:
        assert self.held_out is not None
        n = eval_size(self.cfg.eval, len(self.held_out.samples))
        with self.console.status(f"evaluating ({tag}) on {n} held-out problems"):
            return self._evaluate(self.cfg.eval, reward_scorers(self.cfg))

    def eval_before(self) -> dict[str, Any] | None:
        """The "before" evaluation (None when off, or for a model trained from scratch):
        ``eval_before.json`` when it covers as many problems as ``eval.limit`` asks (a resumed
        run, or the one a pipeline handed over), else evaluated now and saved there. A fresh
        run logs its accuracy at step 0."""
        if self.held_out is None or not self.cfg.eval.before or self.cfg.model.init is not None:
            return None
        path = self.run_dir / BEFORE_FILE
        before = json.loads(path.read_text()) if path.exists() else None
        if before is None or before["n"] != eval_size(self.cfg.eval, len(self.held_out.samples)):
            before = self._full_eval("before")
            path.write_text(json.dumps(before, indent=2))
        print_summary(self.console, {"before": before})
        if not self.resumed:
            self.logger.log(0, {"eval/accuracy": before["accuracy"]})
        return before

    def eval_after(self, step: int) -> dict[str, Any] | None:
        """The "after" evaluation, logged at ``step`` (None when ``eval.after`` is off)."""
        if self.held_out is None or not self.cfg.eval.after:
            return None
        after = self._full_eval("after")
        self.logger.log(step, {"eval/accuracy": after["accuracy"]})
        return after

    def loop(
        self, model: torch.nn.Module, tokenizer: Any, settings: TrainSettings, name: str
    ) -> TrainLoop:
        """The shared loop skeleton for ``model`` under ``settings`` (a stage's config section)."""
        return TrainLoop(self, model, tokenizer, settings, name)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` (the stage's ``summary`` with the run's name, stage and wall
        time) and ``report.html``; returns the summary written."""
        summary = {
            "name": self.cfg.name,
            "stage": self.cfg.stage,
            **summary,
            "wall_s": time.time() - self.started,
        }
        (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        from reasonrl.report import build_report  # matplotlib: only once the run is done

        self.console.print(f"report: {build_report(self.run_dir)}")
        return summary


class TrainSettings(Protocol):
    """The optimizer and schedule fields that the sft, dpo and rm config sections share."""

    steps: int
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    min_lr_ratio: float
    max_grad_norm: float


@dataclass(frozen=True)
class StepOutput:
    """What a stage's step function hands the loop after its backward passes."""

    metrics: dict[str, float]  # the stage's own namespaced metrics (loss/…, dpo/…)
    progress: dict[str, float]  # fields of the progress bar
    work: dict[str, float]  # units done in the step: {"tokens": n} is logged as perf/tokens_per_s


class TrainLoop:
    """AdamW with a warmup-cosine schedule over ``settings.steps``, a checkpointer (restored
    from the context's resume point), the progress bar, ``optim/*`` and ``perf/*`` metrics
    every ``log.every`` steps, an optional held-out evaluation, and the context's ``on_step``.
    ``resumed_extra`` is the resumed checkpoint's ``extra``; ``checkpointer.extra`` goes into
    every checkpoint written."""

    def __init__(
        self,
        ctx: RunContext,
        model: torch.nn.Module,
        tokenizer: Any,
        settings: TrainSettings,
        name: str,
    ) -> None:
        self.ctx, self.model, self.settings, self.name = ctx, model, settings, name
        s = settings
        self.optimizer = build_optimizer(model.parameters(), s.learning_rate, s.weight_decay)
        self.scheduler = warmup_cosine(self.optimizer, s.warmup_steps, s.steps, s.min_lr_ratio)
        self.checkpointer, self.resumed_extra = Checkpointer.for_run(
            ctx.run_dir,
            model,
            tokenizer,
            self.optimizer,
            self.scheduler,
            ctx.cfg.log,
            ctx.resume_from,
        )
        model.train()

    def run(
        self,
        train_step: Callable[[int], StepOutput],
        held_out: Callable[[], dict[str, float]] | None = None,
        eval_every: int = 0,
    ) -> int:
        """Steps from the resume point to ``settings.steps``: ``train_step(step)`` (forward and
        backward), then the clipped optimizer step. ``held_out()`` is logged at step 0 of a
        fresh run, every ``eval_every`` steps and at the end. Returns the steps done."""
        ckpt, logger, total = self.checkpointer, self.ctx.logger, self.settings.steps
        log_every = self.ctx.cfg.log.every
        if held_out is not None and ckpt.done == 0:
            logger.log(0, held_out())
        with ckpt.on_interrupt(), training_progress(total, self.name, ckpt.done) as bar:
            for step in range(ckpt.done, total):
                t0 = time.perf_counter()
                out = train_step(step)
                grad_norm, lr = optimizer_step(
                    self.model.parameters(),
                    self.optimizer,
                    self.scheduler,
                    self.settings.max_grad_norm,
                )
                ckpt.step_done(step)
                done = ckpt.done
                dt = time.perf_counter() - t0
                if done % log_every == 0 or done == total:
                    logger.log(
                        done,
                        {
                            **out.metrics,
                            "optim/grad_norm": grad_norm,
                            "optim/lr": lr,
                            "perf/step_s": dt,
                            **{f"perf/{unit}_per_s": n / dt for unit, n in out.work.items()},
                        },
                    )
                if held_out is not None and (
                    done == total or (eval_every and done % eval_every == 0)
                ):
                    logger.log(done, held_out())
                bar.update(done, **out.progress)
                ckpt.end_of_step(self.ctx.on_step)
        return ckpt.done
