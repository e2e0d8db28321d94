"""One ``RunContext`` for every stage (sft, rm, dpo, rl), and the loop skeleton they share.

How to run: a stage is never started from here but by ``reasonrl run RECIPE`` (``reasonrl
quickstart`` for the bundled CPU example; on one GPU the same command, ``model.device=auto``
picks CUDA), which lands in :func:`reasonrl.train.run.run`. There ``RunContext.open`` takes the
run directory's lock, checks the directory (``--resume`` finds its checkpoint, ``--overwrite``
clears it), saves ``config.yaml``, prints the sizes, seeds, picks the device and opens the
``RunLogger``; the stage builds its model and data and trains on the context;
``RunContext.finish`` writes ``summary.json`` and ``report.html``. In a test, build one
directly: ``RunContext(cfg, run_dir, logger)`` is a fresh run on the CPU.

A policy stage hands the context its held-out problems (``use_held_out``): they give the
"before" evaluation (saved as ``eval_before.json`` and reused while it covers the problems
``eval.limit`` asks for), the quick accuracy every ``eval.every`` steps and the "after" one.
:class:`TrainLoop` is the optimizer, warmup-cosine schedule, checkpointer, progress bar,
logging cadence and per-step hook of the sft, dpo and rm loops; a stage gives it one function
that does a step's forward and backward passes.

Several processes (``torchrun --nproc-per-node N -m reasonrl run RECIPE``, ``accelerate launch
-m reasonrl run ...``; docs/distributed.md): every rank opens the context; rank 0 alone takes
the directory's lock, checks and prepares it, writes config.yaml, prints, logs and writes the
summary and report, and broadcasts the checkpoint to resume from; the other ranks get a quiet
console and a ``SilentLogger``. Evaluations are sharded over the ranks and gathered; the loop's
step function hands back metrics already reduced over the ranks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.table import Table
from transformers import set_seed

from reasonrl.config import ConfigError, EvalConfig, RunConfig, dump_config
from reasonrl.distributed import Ranks, broadcast_object, full_weights, shard
from reasonrl.envs import ToolUse
from reasonrl.eval import eval_size, evaluate
from reasonrl.eval.evaluate import reward_scorers
from reasonrl.eval.summary import print_summary
from reasonrl.logging import METRICS_FILE, RunLogger, SilentLogger, training_progress
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
from reasonrl.train.rundir import holds_run, locked, prepare_dir

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


def on_main(ranks: Ranks, work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0, its result on every rank. A ``ConfigError`` there is raised on every
    rank (rank 0 raises the original), so all ranks stop together with one message."""
    result, message = None, None
    if ranks.is_main:
        try:
            result = work()
        except ConfigError as e:
            message = str(e)
            if ranks.world_size == 1:
                raise
            broadcast_object((None, message), ranks)
            raise
    result, message = broadcast_object((result, message), ranks)
    if message is not None:
        raise ConfigError(message)
    return result


def pick_rank_device(device: str, ranks: Ranks) -> torch.device:
    """``model.device`` resolved; on CUDA under several ranks, this rank's GPU (``LOCAL_RANK``)."""
    picked = pick_device(device)
    if picked.type == "cuda" and ranks.world_size > 1:
        return torch.device("cuda", ranks.local_rank)
    return picked


def _print_sizes(console: Console, cfg: RunConfig, run_dir: Path, ranks: Ranks) -> None:
    table = Table(title=f"{cfg.name}: {cfg.stage} → {run_dir}", show_header=False)
    if ranks.world_size > 1:
        table.add_row("parallel", cfg.train.parallel)
    for key, value in cfg.derived_sizes(ranks.world_size).items():
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
        ranks: Ranks = Ranks(),
    ) -> Iterator[RunContext]:
        """What every stage does first: the directory's lock (held until leaving), the run
        directory (checked, or its checkpoint found), the saved config.yaml, the sizes table,
        the seed, the device, the logger (closed on leaving) — the files and the console on
        rank 0 alone, the checkpoint to resume from broadcast to the other ranks."""
        started = time.time()
        console = (console or Console()) if ranks.is_main else Console(quiet=True)
        with ExitStack() as stack:

            def prepare() -> Path | None:
                stack.enter_context(locked(run_dir))
                resume_from = prepare_run_dir(run_dir, resume, overwrite, console)
                (run_dir / "config.yaml").write_text(dump_config(cfg))
                _print_sizes(console, cfg, run_dir, ranks)
                return resume_from

            resume_from = on_main(ranks, prepare)
            set_seed(cfg.seed)
            device = pick_rank_device(cfg.model.device, ranks)
            start_step = int(resume_from.name.split("-")[1]) if resume_from else None
            logger = (
                RunLogger.for_run(cfg, run_dir, start_step) if ranks.is_main else SilentLogger()
            )
            with logger:
                yield cls(
                    cfg,
                    run_dir,
                    logger,
                    console,
                    device,
                    resume_from,
                    ranks=ranks,
                    started=started,
                )

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
            logged = {"eval/accuracy": quick["accuracy"]}
            if "tool_calls_per_episode" in quick:
                logged["eval/tool_calls_per_episode"] = quick["tool_calls_per_episode"]
            self.logger.log(step, logged)

    def _evaluate(self, ev: EvalConfig, scorers: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.held_out is not None
        h = self.held_out
        # FSDP2: each rank generates its own problems, so with the whole weights (no collectives)
        with full_weights(h.engine.model):
            return evaluate(
                h.engine,
                h.prompts,
                h.samples,
                ev,
                scorers,
                seed=self.cfg.seed,
                ranks=self.ranks,
                tools=ToolUse.from_config(self.cfg.rollout),
                task=self.cfg.task,
            )

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
        before = on_main(
            self.ranks, lambda: json.loads(path.read_text()) if path.exists() else None
        )
        if before is None or before["n"] != eval_size(self.cfg.eval, len(self.held_out.samples)):
            before = self._full_eval("before")
            if self.ranks.is_main:
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

    def share(self, items: list[int], size_name: str) -> list[int]:
        """This rank's contiguous block of a step's ``items`` (all of them on one process);
        ``size_name`` (``sft.examples_per_step``…) must be divisible by the number of ranks."""
        w = self.ranks.world_size
        if len(items) % w:
            raise ConfigError(
                f"{size_name}={len(items)} must be divisible by the number of processes ({w}) "
                f"so every rank trains on the same share of the step; use a multiple of {w}"
            )
        mine = shard(len(items), self.ranks)
        return items[mine.start : mine.stop]

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
        if not self.ranks.is_main:
            return summary
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
            ranks=ctx.ranks,
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
        with (
            ckpt.on_interrupt(),
            training_progress(total, self.name, ckpt.done, console=self.ctx.console) as bar,
        ):
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
