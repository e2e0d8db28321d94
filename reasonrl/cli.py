"""The ``reasonrl`` command line: argument plumbing only; the work lives in the modules."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from reasonrl.config import ConfigError, RunConfig, load_config, read_recipe
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


def _fail(message: str) -> None:
    # escaped: a message's own brackets (pip install 'reasonrl[wandb]') are not rich markup
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
    from reasonrl.train.checkpoint import one_interrupt
    from reasonrl.train.rundir import last_checkpoint, write_error

    try:
        with one_interrupt():
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
        if (message := write_error(run_dir, e)) is None:
            raise
        _fail(message)


def _refuse_if_in_use(run_dir: Path) -> None:
    from reasonrl.train.rundir import refuse_if_in_use

    try:
        refuse_if_in_use(run_dir)
    except ConfigError as e:
        _fail(str(e))


def _run(cfg: RunConfig, out: Path | None, resume: bool, overwrite: bool) -> None:
    run_dir = out or Path(cfg.out or f"runs/{cfg.name}")
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
    run_dir = out or _pipeline_dir(recipe)
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
        str, typer.Option(help="'bundled', a model directory (e.g. RUN_DIR/model) or a hub id.")
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
    import json

    from reasonrl.eval import eval_size, evaluate
    from reasonrl.eval.evaluate import EXAMPLES
    from reasonrl.models import load_model, load_tokenizer, pick_device
    from reasonrl.rewards.reward_model import RewardModelVerifier
    from reasonrl.rollout import ENGINES
    from reasonrl.tasks import load_splits, render_prompt
    from reasonrl.train.run import print_summary, reward_scorers, score_changes, seed_everything

    cfg = _eval_config(recipe, overrides or [], model, stage, run_dir)
    before = None
    if baseline is not None:
        try:
            before = json.loads(baseline.read_text())
        except (OSError, ValueError) as e:
            _fail(f"could not read the baseline {baseline}: {e}")
        if not isinstance(before, dict) or not {"accuracy", "n", "examples"} <= before.keys():
            _fail(
                f"the baseline {baseline} is not the results of an evaluation (what "
                "`reasonrl eval --out` writes, or a run's eval_before.json)"
            )
    try:
        tokenizer = load_tokenizer(cfg.model.path)
        policy = load_model(cfg.model, pick_device(cfg.model.device))
        _, held_out = load_splits(cfg.task)
        limit = eval_size(cfg.eval, len(held_out))
        first = [s.prompt for s in held_out[: min(EXAMPLES, limit)]]
        if before is not None and _problems(before) != (limit, first):
            raise ConfigError(f"the baseline {baseline} was evaluated on other problems than these")
        scorers = reward_scorers(cfg)
        for spec in reward_model or []:
            name, _, path = spec.partition("=") if "=" in spec else (spec, "", spec)
            verifier = RewardModelVerifier(path, normalize="none", device=cfg.model.device)
            scorers[name] = verifier.raw_scores
    except ConfigError as e:
        _fail(str(e))
    prompts = [
        render_prompt(s, tokenizer, cfg.task.prompt, cfg.task.chat_template) for s in held_out
    ]
    engine = ENGINES[cfg.rollout.engine](policy, tokenizer, cfg.eval.batch_completions)
    seed_everything(cfg.seed)  # the same model, recipe and seed: the same sampled pass@k
    with console.status(f"evaluating {model} on {limit} problems"):
        result = evaluate(engine, prompts, held_out, cfg.eval, scorers)
    summary = {"after": result}
    if before is not None:
        summary |= {"before": before}
        summary["score_changes"] = score_changes(summary)
    print_summary(console, summary)
    if before is not None:
        paired = summary["score_changes"].get("change", {})
        for name in sorted((result.get("scores") or {}).keys() - paired.keys()):
            console.print(f"no paired change of {name}: the baseline kept no per-problem scores")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))


def _pipeline_dir(recipe: str) -> Path:
    """Where ``reasonrl run`` puts a multi-stage recipe's run without --out: the recipe's
    top-level ``out``, else runs/<name>."""
    data = read_recipe(recipe)[0]
    return Path(str(data.get("out") or f"runs/{data.get('name', Path(recipe).stem)}"))


def _eval_config(
    recipe: str, overrides: list[str], model: str, stage: str | None, run_dir: Path | None
) -> RunConfig:
    """The config ``reasonrl eval`` uses: the recipe's, or one policy stage's of a multi-stage
    recipe (its ``@name`` reward models resolved under ``run_dir``), with ``model`` as the
    model to evaluate."""
    from reasonrl.pipeline import is_pipeline, load_pipeline

    try:
        pipeline = is_pipeline(recipe)
    except ConfigError as e:
        _fail(str(e))
    if not pipeline:
        if stage is not None:
            _fail(f"--stage is for multi-stage recipes; {recipe} has one stage")
        return _load(recipe, [*overrides, f"model.path={model}"])
    try:
        stages = load_pipeline(recipe, overrides, run_dir or _pipeline_dir(recipe))
    except ConfigError as e:
        _fail(str(e))
    policies = [s.name for s in stages if s.cfg.stage != "rm"]
    if stage is None:
        _fail(
            f"{recipe} is a multi-stage recipe: name the stage to evaluate with, --stage {policies}"
        )
    if stage not in policies:
        _fail(f"{stage!r} is not a policy stage of {recipe}: --stage one of {policies}")
    cfg = next(s.cfg for s in stages if s.name == stage)
    return cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"path": model, "init": None})}
    )


def _problems(result: dict) -> tuple[int, list[str]]:
    """What identifies an evaluation's problems: their count and the first prompts it keeps as
    examples (``EXAMPLES`` of them at most)."""
    return result.get("n", 0), [e["prompt"] for e in result.get("examples", [])]


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
