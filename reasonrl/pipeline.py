"""Multi-stage recipes: ``sft``, ``rl``, ``rm`` and ``dpo`` stages run in order, each one
starting from an earlier stage's model.

A multi-stage recipe has a ``stages`` list; every other top-level key (``task``, ``eval``,
``seed``…) is a default that each stage's own keys override::

    name: qwq-style
    task: {name: chain_sum}
    stages:
      - {name: cold-start, stage: sft, sft: {steps: 200}}
      - {name: reasoning, stage: rl}                  # starts from cold-start's model
      - {name: rm, stage: rm, model: {path: "@cold-start"}}
      - name: general
        stage: rl
        rewards: {rm: {verifier: reward_model, options: {path: "@rm"}}}

``"@name"`` anywhere in a stage stands for stage ``name``'s saved model directory; a stage
without ``model.path`` starts from the last policy stage (not ``rm``) before it. Stage ``i``
runs in ``RUN_DIR/<i>-<name>``; on ``--resume`` finished stages (those with a
``summary.json``) are skipped and an interrupted one continues from its checkpoint.
Overrides address a stage by its name (``general.rl.steps=20``) or every stage (``seed=1``,
``rl.steps=2``, which also beats the steps a stage sets itself); the name addressed beats both.
The run directory is ``--out``, else the recipe's top-level ``out``, else ``runs/<name>``.

Under a launcher (``torchrun --nproc-per-node N -m reasonrl run RECIPE``) every stage runs on
all the ranks, on one process group made before the first stage; rank 0 alone writes the
pipeline's own files and decides which stages ``--resume`` skips (docs/distributed.md).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from reasonrl.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    dump_yaml,
    load_config,
    read_recipe,
    validate_config,
)
from reasonrl.train.rundir import PIPELINE_FILE, holds_run, locked, pipeline_run_dir, prepare_dir

SUMMARY_FILE = "summary.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_REF_RE = re.compile(r"^@([A-Za-z0-9_-]+)$")


@dataclass(frozen=True)
class Stage:
    name: str
    cfg: RunConfig
    dir: Path


def is_pipeline(recipe: str | Path) -> bool:
    """Whether ``recipe`` (a path or bundled name) is a multi-stage recipe."""
    data, _ = read_recipe(recipe)
    return "stages" in data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Nested mappings merged key by key; anything else in ``top`` replaces ``base``."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve_refs(value: Any, models: dict[str, Path], where: str) -> Any:
    """Replace every ``"@name"`` string with the model directory of the stage ``name``."""
    if isinstance(value, dict):
        return {k: _resolve_refs(v, models, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, models, where) for v in value]
    match = _REF_RE.match(value) if isinstance(value, str) else None
    if match is None:
        return value
    if match[1] not in models:
        known = ", ".join(models) or "none"
        raise ConfigError(
            f"{where}: '@{match[1]}' is not an earlier stage (earlier stages: {known})"
        )
    return str(models[match[1]])


# Keys that name the pipeline's run itself: a stage's name and directory come from the recipe's
# stages and RUN_DIR, so an override of them could only be ignored.
_PIPELINE_KEYS = {"name": "set 'name:' in the recipe", "out": "pass --out DIR"}


def _split_overrides(overrides: list[str], names: list[str]) -> tuple[list[str], dict[str, list]]:
    """Overrides for every stage, and per stage name (``name.key=value``)."""
    shared: list[str] = []
    per_stage: dict[str, list[str]] = {n: [] for n in names}
    keys = set(RunConfig.model_fields)
    for text in overrides:
        head, dot, rest = text.partition(".")
        staged = bool(dot) and head in per_stage
        key = (rest if staged else text).partition("=")[0].strip()
        if key in _PIPELINE_KEYS:
            raise ConfigError(
                f"override {text!r}: a multi-stage recipe's {key} is not set per run; "
                f"{_PIPELINE_KEYS[key]}"
            )
        if staged:
            per_stage[head].append(rest)
            continue
        close = difflib.get_close_matches(head, names, n=1)
        if dot and head not in keys and close:  # else validation names the unknown key
            raise ConfigError(
                f"unknown stage or key {head!r} in {text!r} — did you mean the stage {close[0]!r}?"
            )
        shared.append(text)
    return shared, per_stage


def _check_shared_rewards(shared: list[str], stages: dict[str, dict[str, Any]]) -> None:
    """An override for every stage of a reward term that only some RL stages have would add
    the term to the others (a reward model's weight making it a reward of the first RL stage):
    it is refused, naming the stages that have the term."""
    default = set(RunConfig.model_fields["rewards"].get_default(call_default_factory=True))
    rl = {
        n: set(d.get("rewards") or default)
        for n, d in stages.items()
        if d.get("stage", "rl") == "rl"
    }
    for text in shared:
        keys = text.partition("=")[0].strip().split(".")
        if keys[0] != "rewards" or len(keys) < 2:
            continue
        having = [n for n, terms in rl.items() if keys[1] in terms]
        if having and len(having) < len(rl):
            raise ConfigError(
                f"override {text!r}: only stage(s) {having} have the reward {keys[1]!r}; "
                f"address one by name, e.g. {having[0]}.{text}"
            )


def load_pipeline(recipe: str | Path, overrides: list[str], run_dir: Path) -> list[Stage]:
    """The validated stages of a multi-stage recipe, with ``@name`` resolved under ``run_dir``.

    A stage's keys beat the recipe's top-level defaults; an override for every stage beats
    both, and an override addressed to the stage by name beats that. Every stage is validated
    before anything runs, so a typo in the last stage fails at once.
    """
    data, path = read_recipe(recipe)
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{path}: 'stages' must be a non-empty list of stage mappings")
    names = []
    for i, raw in enumerate(stages):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"{path}: stage {i} needs a 'name' of letters, digits, - or _")
        if name in names:
            raise ConfigError(f"{path}: two stages are called {name!r}")
        # a stage's directory is RUN_DIR/<i>-<name>: its own out could only be ignored
        if "out" in raw:
            raise ConfigError(
                f"{path}: stage {name!r} sets 'out', but stage {i} runs in RUN_DIR/{i}-{name}; "
                "set out: at the top level of the recipe, or pass --out"
            )
        names.append(name)
    shared, per_stage = _split_overrides(overrides, names)
    defaults = {k: v for k, v in data.items() if k not in ("stages", "name", "out")}
    pipeline_name = str(data.get("name", path.stem))
    own = {
        raw["name"]: _merge(defaults, {k: v for k, v in raw.items() if k != "name"})
        for raw in stages
    }
    _check_shared_rewards(shared, own)

    out: list[Stage] = []
    models: dict[str, Path] = {}
    last_policy: str | None = None
    for i, raw in enumerate(stages):
        name = raw["name"]
        where = f"{path} stage '{name}'"
        merged = apply_overrides(own[name], [*shared, *per_stage[name]])
        merged["name"] = f"{pipeline_name}/{name}"
        has_path = "path" in (merged.get("model") or {})
        if not has_path and "init" not in (merged.get("model") or {}) and last_policy:
            merged.setdefault("model", {})["path"] = f"@{last_policy}"
        cfg = validate_config(_resolve_refs(merged, models, where), where)
        stage_dir = run_dir / f"{i}-{name}"
        out.append(Stage(name, cfg, stage_dir))
        models[name] = stage_dir / "model"
        if cfg.stage != "rm":
            last_policy = name
    return out


def _stage_row(stage: Stage, summary: dict[str, Any]) -> dict[str, Any]:
    row = {
        "name": stage.name,
        "stage": stage.cfg.stage,
        "dir": str(stage.dir),
        "steps": summary.get("steps"),
        "wall_s": summary.get("wall_s"),
    }
    for phase in ("before", "after"):
        res = summary.get(phase) or {}
        keys = ("accuracy", "n", "ci_low", "ci_high", "pass_at_k", "scores", "tasks")
        row[phase] = {k: res[k] for k in keys if k in res}
    if summary.get("eval"):  # reward-model stages: held-out pairwise metrics
        row["eval"] = summary["eval"]
    if summary.get("memory"):  # RL stages: the weights held and the peak
        row["memory"] = summary["memory"]
    return row


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "–"


def _change(before: Any, after: Any) -> str:
    if isinstance(before, float) and isinstance(after, float):
        return f"{100 * (after - before):+.1f} pts"
    return "–"


def print_pipeline(console: Console, rows: list[dict[str, Any]]) -> None:
    """One line per stage: held-out accuracy before → after (or the RM's pairwise accuracy)."""
    table = Table(title="stages")
    for col in ("stage", "kind", "steps", "before", "after", "change", "wall"):
        table.add_column(col, no_wrap=col == "stage")
    for r in rows:
        before, after = r["before"].get("accuracy"), r["after"].get("accuracy")
        if r.get("eval"):
            after_text = f"pairwise {_pct(r['eval'].get('pairwise_accuracy'))}"
        else:
            after_text = _pct(after)
        wall = r.get("wall_s")
        table.add_row(
            r["name"],
            r["stage"],
            str(r.get("steps", "–")),
            _pct(before),
            after_text,
            _change(before, after),
            f"{wall:.0f}s" if isinstance(wall, int | float) else "–",
        )
        tasks_before, tasks_after = r["before"].get("tasks", {}), r["after"].get("tasks", {})
        for task in sorted(set(tasks_before) | set(tasks_after)):
            b = tasks_before.get(task, {}).get("accuracy")
            a = tasks_after.get(task, {}).get("accuracy")
            table.add_row(f"  · {task}", "", "", _pct(b), _pct(a), _change(b, a), "")
    console.print(table)


def run_pipeline(
    recipe: str | Path,
    overrides: list[str],
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run every stage of a multi-stage recipe in ``run_dir``; returns the combined summary.
    The pipeline holds ``run_dir``'s lock from its first stage to the end (each stage its own
    directory's). Started by a launcher, every process calls it: the process group is made
    once, before the first stage, and every stage runs on it (``reasonrl.train.run.run``);
    rank 0 alone takes the lock and writes the pipeline's files (pipeline.yaml, each stage's
    seeded ``eval_before.json``, summary.json, the comparison report), and decides which
    stages a ``--resume`` skips, for every rank."""
    from reasonrl.checks import check_config
    from reasonrl.distributed import init_distributed
    from reasonrl.models import pick_device
    from reasonrl.train.context import on_main
    from reasonrl.train.run import run

    t0 = time.time()
    stages = load_pipeline(recipe, overrides, run_dir)
    produced = {s.dir / "model" for s in stages}
    for stage in stages:  # every stage's trackers, models, files and verifiers before the first
        try:
            check_config(stage.cfg, produced)
        except ConfigError as e:
            raise ConfigError(f"stage {stage.name!r}: {e}") from e
    ranks = init_distributed(pick_device(stages[0].cfg.model.device).type)
    console = (console or Console()) if ranks.is_main else Console(quiet=True)
    with ExitStack() as stack:

        def prepare() -> None:
            stack.enter_context(locked(run_dir))
            has_run = (run_dir / PIPELINE_FILE).exists()
            prepare_dir(run_dir, has_run, resume, overwrite, console, what="a pipeline run")
            resolved = {s.name: s.cfg.model_dump(mode="json") for s in stages}
            (run_dir / PIPELINE_FILE).write_text(dump_yaml(resolved))

        on_main(ranks, prepare)
        for i, stage in enumerate(stages):
            # (skip, resume, overwrite): rank 0 looks at the files, every rank follows
            skip, cont, again = on_main(ranks, lambda i=i: _plan(stages, i, resume))
            if skip:
                console.print(f"[bold]stage {i} {stage.name}[/]: done, skipped")
                continue
            console.rule(f"stage {i}/{len(stages) - 1}: {stage.name} ({stage.cfg.stage})")
            run(stage.cfg, stage.dir, resume=cont, overwrite=again, console=console)
        return on_main(ranks, lambda: _finish(stages, run_dir, time.time() - t0, console))


def _plan(stages: list[Stage], i: int, resume: bool) -> tuple[bool, bool, bool]:
    """Whether stage ``i`` is skipped (``--resume`` and finished), resumed from its checkpoint,
    or run again over an earlier start (``overwrite``); a stage that never ran gets its
    before-evaluation from the stage before (``_reuse_eval``)."""
    stage = stages[i]
    if resume and (stage.dir / SUMMARY_FILE).exists():
        return True, False, False
    started = holds_run(stage.dir)
    if not started and i > 0:
        _reuse_eval(stages[i - 1], stage)
    # Resume only a stage that had begun; a stage that never ran starts clean.
    cont = resume and _has_checkpoint(stage.dir)
    return False, cont, started and not cont


def _finish(stages: list[Stage], run_dir: Path, wall_s: float, console: Console) -> dict[str, Any]:
    """The pipeline's summary.json (a row per stage, from each stage's summary), its table and
    the comparison report; returns the summary."""
    from reasonrl.report import build_comparison_report

    rows = [_stage_row(s, json.loads((s.dir / SUMMARY_FILE).read_text())) for s in stages]
    combined = {"name": run_dir.name, "stages": rows, "wall_s": wall_s}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(combined, indent=2))
    print_pipeline(console, rows)
    report = build_comparison_report([s.dir for s in stages], run_dir)
    console.print(f"report: {report}")
    return combined


def _reuse_eval(prev: Stage, stage: Stage) -> None:
    """Seed ``stage``'s before-evaluation with ``prev``'s after-evaluation when it is the same
    model on the same held-out problems with the same settings (saves one evaluation)."""
    from reasonrl.train.context import BEFORE_FILE

    summary_path = prev.dir / SUMMARY_FILE
    if not summary_path.exists() or stage.cfg.model.path != str(prev.dir / "model"):
        return
    after = json.loads(summary_path.read_text()).get("after")
    same = prev.cfg.task == stage.cfg.task and prev.cfg.eval == stage.cfg.eval
    if after and same and stage.cfg.model.init is None:
        stage.dir.mkdir(parents=True, exist_ok=True)
        (stage.dir / BEFORE_FILE).write_text(json.dumps(after, indent=2))


def _has_checkpoint(stage_dir: Path) -> bool:
    from reasonrl.train.checkpoint import latest_checkpoint

    return latest_checkpoint(stage_dir) is not None


def eval_config(
    recipe: str, overrides: list[str], model: str, stage: str | None, run_dir: Path | None
) -> RunConfig:
    """The config ``reasonrl eval`` uses: the recipe's, or one policy stage's of a multi-stage
    recipe (its ``@name`` reward models resolved under ``run_dir``, by default where the
    pipeline runs), with ``model`` as the model to evaluate."""
    if not is_pipeline(recipe):
        if stage is not None:
            raise ConfigError(f"--stage is for multi-stage recipes; {recipe} has one stage")
        return load_config(recipe, [*overrides, f"model.path={model}"])
    stages = load_pipeline(recipe, overrides, run_dir or pipeline_run_dir(recipe))
    policies = [s.name for s in stages if s.cfg.stage != "rm"]
    if stage is None:
        raise ConfigError(
            f"{recipe} is a multi-stage recipe: name the stage to evaluate with, --stage {policies}"
        )
    if stage not in policies:
        raise ConfigError(f"{stage!r} is not a policy stage of {recipe}: --stage one of {policies}")
    cfg = next(s.cfg for s in stages if s.name == stage)
    return cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"path": model, "init": None})}
    )
