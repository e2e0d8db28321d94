"""The ``reasonrl`` command line: argument plumbing only; the work lives in the modules.

Under a launcher (``torchrun``, ``accelerate launch``) every process runs the same command:
rank 0 (``RANK``, unset on one process) prints the messages, the others stay quiet."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from reasonrl.config import ConfigError, RunConfig, load_config
from reasonrl.sandbox.cli import sandbox_app

app = typer.Typer(
    help="Post-train language models with RL: SFT, GRPO, checked rewards, one YAML recipe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(sandbox_app, name="sandbox", help="The code-execution sandbox server.")
console = Console()
err_console = Console(stderr=True)

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides of recipe keys, e.g. rl.learning_rate=5e-6 seed=1."),
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Run directory (default: runs/<recipe name>).")
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue from the run directory's latest checkpoint.")
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an earlier run in the run directory.")
]


def _main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _fail(message: str) -> None:
    # escaped: a message's own brackets (pip install 'reasonrl[wandb]') are not rich markup.
    # Every rank meets the same ConfigError (the config, or rank 0's broadcast): one prints it.
    if _main_rank():
        err_console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


def _load(recipe: str | None, overrides: list[str] | None) -> RunConfig:
    try:
        return load_config(recipe, overrides or [])
    except ConfigError as e:
        _fail(str(e))
        raise  # unreachable; keeps type checkers happy


@contextmanager
def _training(run_dir: Path) -> Iterator[None]:
    """A bad configuration, a read-only --out or a full disk is an error message; Ctrl-C (after
    the trainer's checkpoint; a second one is ignored) says whether there is a checkpoint (or a
    finished stage) to continue from, and how."""
    from reasonrl.distributed import shutdown
    from reasonrl.train.checkpoint import one_interrupt
    from reasonrl.train.rundir import last_checkpoint, write_error

    try:
        with one_interrupt(), _stopped_by_launcher(run_dir):
            yield
    except ConfigError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        # a run's checkpoint, or a pipeline stage's checkpoint or finished summary
        if last_checkpoint(run_dir) or any(run_dir.glob("*/summary.json")):
            err_console.print(
                f"\ninterrupted: progress saved under {run_dir}; continue with --resume"
            )
        else:
            err_console.print(
                f"\ninterrupted before the first checkpoint: nothing to resume in {run_dir}; "
                "--overwrite starts it again"
            )
        raise typer.Exit(130) from None
    except Exception as e:
        if _lost_a_peer(e):
            _stop_rank(run_dir, "a collective lost its connection")
        if (message := write_error(run_dir, e)) is None:
            raise
        _fail(message)
    finally:
        shutdown()  # the process group of a launched run, also on error


def _lost_a_peer(error: Exception) -> bool:
    # gloo reports a dead rank as a RuntimeError of the socket; NCCL as a DistError
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    import torch.distributed as dist

    lost = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")
    return isinstance(error, dist.DistError) or any(text in str(error) for text in lost)


def _stop_rank(run_dir: Path, reason: str) -> None:
    """End this rank of a run whose other process ended, saying how to continue; at once: a
    collective with the dead rank (or destroying the group) would only wait for it."""
    os.write(
        2,
        f"\nrank {os.environ.get('RANK', '?')}: stopped: another process of the run ended "
        f"({reason}); continue from the last complete checkpoint in {run_dir} with "
        "--resume\n".encode(),
    )
    os._exit(1)


@contextmanager
def _stopped_by_launcher(run_dir: Path) -> Iterator[None]:
    """Under a launcher: torchrun answers a rank that died (``kill -9``, out of memory) by sending
    SIGTERM to the others; each says so and how to continue, then exits 1. (A rank inside a
    collective usually sees the connection drop first: ``_lost_a_peer``.)"""
    import signal

    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        _stop_rank(run_dir, "the launcher stopped this one")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _refuse_if_in_use(run_dir: Path) -> None:
    from reasonrl.train.rundir import refuse_if_in_use

    try:
        refuse_if_in_use(run_dir)
    except ConfigError as e:
        _fail(str(e))


def _run(cfg: RunConfig, out: Path | None, resume: bool, overwrite: bool) -> None:
    run_dir = out or Path(cfg.out or f"runs/{cfg.name}")
    if _main_rank():  # rank 0 takes the lock: the others would see it taken
        _refuse_if_in_use(run_dir)  # before the slow imports
    from reasonrl.train.run import run

    with _training(run_dir):
        run(cfg, run_dir, resume=resume, overwrite=overwrite, console=console)


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="A recipe file, or a bundled recipe's name.")],
    overrides: Overrides = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run a recipe: evaluate, train (SFT, RL, reward model or DPO), evaluate again, write the
    report. A multi-stage recipe (one with ``stages``) runs its stages in order; override a
    stage's key with STAGE.key=value."""
    from reasonrl.pipeline import is_pipeline, run_pipeline

    try:
        pipeline = is_pipeline(recipe)
    except ConfigError as e:
        _fail(str(e))
    if not pipeline:
        _run(_load(recipe, overrides), out, resume, overwrite)
        return
    from reasonrl.train.rundir import pipeline_run_dir

    run_dir = out or pipeline_run_dir(recipe)
    if _main_rank():  # rank 0 takes the lock: the others would see it taken
        _refuse_if_in_use(run_dir)
    with _training(run_dir):
        run_pipeline(
            recipe, overrides or [], run_dir, resume=resume, overwrite=overwrite, console=console
        )


@app.command()
def quickstart(
    overrides: Overrides = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """GRPO on the bundled tiny model for chained arithmetic, on CPU in minutes.

    Evaluates the model on 500 held-out problems, trains, evaluates again and prints the
    before/after table; everything lands in runs/quickstart (or --out).
    """
    _run(_load("quickstart", overrides), out, resume, overwrite)


@app.command()
def rm(
    recipe: Annotated[
        str, typer.Argument(help="A reward-model recipe file, or a bundled recipe's name.")
    ] = "tiny-rm",
    overrides: Overrides = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a Bradley-Terry reward model on chosen/rejected pairs (the recipe's ``rm``
    section); reports held-out pairwise accuracy and saves the model in HF format."""
    _run(_load(recipe, [*(overrides or []), "stage=rm"]), out, resume, overwrite)


@app.command()
def dpo(
    recipe: Annotated[
        str, typer.Argument(help="A DPO recipe file, or a bundled recipe's name.")
    ] = "tiny-dpo",
    overrides: Overrides = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Direct preference optimisation (or IPO, ``dpo.loss_type=ipo``) on chosen/rejected pairs
    against the frozen starting model; evaluates held-out accuracy before and after."""
    _run(_load(recipe, [*(overrides or []), "stage=dpo"]), out, resume, overwrite)


@app.command("eval")
def eval_cmd(
    model: Annotated[
        str,
        typer.Option(
            help="'bundled', 'bundled-tool-use', a model directory (e.g. RUN_DIR/model) or a "
            "hub id."
        ),
    ] = "bundled",
    recipe: Annotated[
        str, typer.Option(help="Recipe whose task and eval settings to use.")
    ] = "quickstart",
    overrides: Overrides = None,
    reward_model: Annotated[
        list[str] | None,
        typer.Option(
            help="A saved reward model, DIR or NAME=DIR (e.g. RUN_DIR/model of an rm stage), "
            "that also scores the greedy completions, raw, under NAME (default: DIR); repeatable."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the results as JSON here.")] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="Results of an earlier eval (its --out, or a run's eval_before.json) on the same "
            "problems: shown as 'before', with the paired change of each reward-model score."
        ),
    ] = None,
    stage: Annotated[
        str | None,
        typer.Option(
            help="With a multi-stage recipe: the policy stage whose task, eval settings and "
            "reward models to use."
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="With --stage: the pipeline's run directory, where its '@name' models are "
            "(default runs/<recipe name>)."
        ),
    ] = None,
) -> None:
    """Evaluate a model on a recipe's held-out split: greedy pass@1 and sampled pass@k, and
    the mean score of the greedy completions under each reward model (the recipe's learned
    reward terms and every --reward-model)."""
    from reasonrl.eval.command import evaluate_model
    from reasonrl.pipeline import eval_config

    try:
        cfg = eval_config(recipe, overrides or [], model, stage, run_dir)
        evaluate_model(cfg, model, reward_model or [], baseline, out, console)
    except ConfigError as e:
        _fail(str(e))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds metrics.jsonl).")],
    compare: Annotated[
        list[Path] | None, typer.Option(help="Other run directories to plot alongside.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Directory of a comparison report: report.html and its plots "
            "(default RUN_DIR/comparison)."
        ),
    ] = None,
) -> None:
    """Rebuild RUN_DIR/report.html (plots and the before/after table) from its files; with
    --compare DIR (repeated for more runs), a report that draws the runs on the same axes."""
    from reasonrl.report import build_comparison_report, build_report

    dirs = [run_dir, *(compare or [])]
    for d in dirs:
        if not (d / "metrics.jsonl").exists():
            _fail(f"no metrics.jsonl in {d}: not a run directory")
    if compare:
        path = build_comparison_report(dirs, out or run_dir / "comparison")
    else:
        path = build_report(run_dir)
    console.print(f"wrote {path}")


@app.command()
def classic(
    algo: Annotated[
        str,
        typer.Argument(
            help="value-iteration | policy-iteration | q-learning | sarsa | reinforce | "
            "actor-critic"
        ),
    ],
    env: Annotated[str, typer.Option(help="gymnasium env id, e.g. FrozenLake-v1, CartPole-v1")] = (
        "FrozenLake-v1"
    ),
    episodes: Annotated[
        int | None, typer.Option(help="Training episodes (default per algo).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default runs/classic-…).")
    ] = None,
) -> None:
    """Classic RL on gymnasium: planning on the MDP, tabular TD control, policy gradients."""
    from reasonrl.classic.cli import run_classic

    try:
        run_classic(algo, env, episodes, seed, out or Path(f"runs/classic-{algo}-{env}"))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
