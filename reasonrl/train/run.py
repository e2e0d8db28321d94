"""Running one recipe end to end: set up the run directory and the model, evaluate before,
train (SFT or RL), evaluate after, write ``summary.json`` and ``report.html``.

``reasonrl run RECIPE`` and ``reasonrl quickstart`` both land here.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from reasonrl.checks import check_config
from reasonrl.config import ConfigError, RunConfig, dump_config
from reasonrl.eval import eval_size, evaluate
from reasonrl.eval.stats import paired_change
from reasonrl.logging import METRICS_FILE, RunLogger
from reasonrl.models import (
    init_model,
    load_model,
    load_tokenizer,
    pick_device,
    resolve_model_path,
)
from reasonrl.models.lora import (
    apply_lora,
    enable_activation_checkpointing,
    load_base,
    save_model,
)
from reasonrl.models.tokenizer import train_tokenizer
from reasonrl.rollout import ENGINES
from reasonrl.tasks import Sample, load_splits, render_prompt
from reasonrl.tasks.prompts import R1_INSTRUCTION
from reasonrl.tasks.sources import read_sft_pairs
from reasonrl.tasks.traces import solution_text
from reasonrl.train.checkpoint import checkpoint_dir, latest_checkpoint
from reasonrl.train.memory import module_mib, peak_memory_mib
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sft_pairs(cfg: RunConfig, train: list[Sample]) -> list[tuple[Sample, str]]:
    """(sample, target completion) for the SFT stage: generated traces or a JSONL file."""
    if cfg.sft.data == "traces":
        rng = random.Random(cfg.seed)
        return [(s, solution_text(s, rng.random() < cfg.sft.estimate_fraction)) for s in train]
    if not cfg.sft.train_path:
        raise ConfigError("sft.data=jsonl needs sft.train_path")
    return read_sft_pairs(cfg.sft.train_path)


def build_model(
    cfg: RunConfig, train: list[Sample], resume_from: Path | None, device: torch.device
) -> tuple[torch.nn.Module, Any]:
    """The model to train: a checkpoint on resume, a fresh one from ``model.init``, or
    ``model.path``; with ``model.lora``, that model (a LoRA checkpoint: its base) wrapped in the
    adapters (a LoRA checkpoint's own)."""
    lora = cfg.model.lora
    if lora is not None and cfg.model.init is not None:
        raise ConfigError("model.lora adapts pretrained weights: it cannot go with model.init")
    if resume_from is not None and lora is None:
        tokenizer = load_tokenizer(str(resume_from))
        model = load_model(cfg.model.model_copy(update={"path": str(resume_from)}), device)
    elif cfg.model.init is not None:
        corpus = [
            f"user\n{s.prompt}\n{R1_INSTRUCTION}\nassistant\n{completion}"
            for s, completion in sft_pairs(cfg, train[:5000])[:5000]
        ]
        tokenizer = train_tokenizer(corpus, cfg.model.init.vocab_size)
        model = init_model(cfg.model.init, tokenizer, cfg.model.dtype).to(device)
    else:
        model = load_base(cfg.model, device)
        tokenizer = load_tokenizer(str(resume_from or cfg.model.path))
    if cfg.model.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if lora is not None:
        model = apply_lora(model, lora, resume_from)
    return model, tokenizer


def build_critic(cfg: RunConfig, resume_from: Path | None, device: torch.device) -> Any:
    """PPO's value model: from the checkpoint on resume, else ``algo.critic_path`` or the policy's
    starting weights with a new scalar head. None for critic-free algorithms."""
    if cfg.algo.name != "ppo":
        return None
    from reasonrl.models.value import ValueModel
    from reasonrl.train.rl import CRITIC_DIR

    if resume_from is not None:
        path = str(resume_from / CRITIC_DIR)
    else:
        path = resolve_model_path(cfg.algo.critic_path or cfg.model.path)
    return ValueModel.from_pretrained(path, getattr(torch, cfg.model.dtype)).to(device)


def reward_scorers(cfg: RunConfig) -> dict[str, Any]:
    """Raw-score functions of the recipe's learned reward terms (``reward_model`` verifiers),
    so that evaluations report what the reward model thinks of the greedy completions."""
    from reasonrl.rewards.compose import reward_terms

    learned = {n for n, s in cfg.rewards.items() if s.verifier == "reward_model"}
    if cfg.stage != "rl" or not learned:
        return {}
    # the same verifier instances the training rewards use (one copy of each reward model)
    return {t.name: t.verifier.raw_scores for t in reward_terms(cfg.rewards) if t.name in learned}


def rl_memory(
    cfg: RunConfig, policy: torch.nn.Module, ref: torch.nn.Module | None, critic: Any
) -> dict[str, float]:
    """MiB of every model an RL run holds: the policy, its trainable part and AdamW's two
    moments of it, the reference (0 under LoRA: the adapter-disabled policy), the critic and its
    optimizer state, and the reward models."""
    from reasonrl.rewards.compose import reward_terms

    trainable = module_mib(policy, trainable_only=True)
    memory = {
        "policy_mib": module_mib(policy),
        "trainable_mib": trainable,
        "optimizer_mib": 2 * trainable,
        "reference_mib": module_mib(ref) if ref is not None else 0.0,
        "critic_mib": module_mib(critic) if critic is not None else 0.0,
        "critic_optimizer_mib": 2 * module_mib(critic, True) if critic is not None else 0.0,
    }
    reward_models = [getattr(t.verifier, "model", None) for t in reward_terms(cfg.rewards)]
    memory["reward_models_mib"] = sum(
        module_mib(m) for m in reward_models if isinstance(m, torch.nn.Module)
    )
    return memory


def _print_sizes(console: Console, cfg: RunConfig, run_dir: Path) -> None:
    table = Table(title=f"{cfg.name}: {cfg.stage} → {run_dir}", show_header=False)
    for key, value in cfg.derived_sizes().items():
        table.add_row(key, str(value))
    console.print(table)


def _summary_rows(table: Table, results: dict[str, Any], suffix: str = "") -> None:
    """Rows of the before/after table for ``results`` (phase → eval result)."""
    for phase, res in results.items():
        passk = ", ".join(f"@{k} {100 * v:.1f}%" for k, v in res.get("pass_at_k", {}).items())
        table.add_row(
            phase + suffix,
            f"{100 * res['accuracy']:.1f}% [{100 * res['ci_low']:.1f}, {100 * res['ci_high']:.1f}]",
            str(res["n"]),
            passk,
        )
    if len(results) == 2:
        before, after = results["before"], results["after"]
        delta = 100 * (after["accuracy"] - before["accuracy"])
        ks = [k for k in after.get("pass_at_k", {}) if k in before.get("pass_at_k", {})]
        passk = ", ".join(
            f"@{k} {100 * (after['pass_at_k'][k] - before['pass_at_k'][k]):+.1f}" for k in ks
        )
        table.add_row("change" + suffix, f"{delta:+.1f} pts", "", passk)


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """The before/after table (and the same for each task of a mix), the mean reward-model
    scores, and their paired changes where the summary holds them (``score_changes``)."""
    phases = {p: summary[p] for p in ("before", "after") if summary.get(p)}
    if not phases:  # eval.before and eval.after both off
        return
    table = Table(title="held-out accuracy")
    for col in ("", "greedy pass@1 [95% CI]", "n", "pass@k (sampled)"):
        table.add_column(col)
    _summary_rows(table, phases)
    for task in sorted({t for res in phases.values() for t in res.get("tasks") or {}}):
        per_task = {p: r["tasks"][task] for p, r in phases.items() if task in r.get("tasks", {})}
        _summary_rows(table, per_task, f" · {task}")
    console.print(table)
    for phase, res in phases.items():
        parts = [(phase, res)] + [(f"{phase} · {t}", r) for t, r in res.get("tasks", {}).items()]
        for label, part in parts:
            for name, s in (part.get("scores") or {}).items():
                console.print(
                    f"{label}: mean {name} score of the greedy completions {s['mean']:.3f} "
                    f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
                )
    for label, changes in (summary.get("score_changes") or {}).items():
        for name, c in changes.items():
            console.print(
                f"{label}: mean {name} score {c['mean']:+.3f} "
                f"(paired 95% CI {c['ci_low']:+.3f} to {c['ci_high']:+.3f}) over {c['n']} problems"
            )


def score_changes(summary: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """The change of each reward-model score from ``before`` to ``after`` on the same problems,
    with the CI of the per-problem differences: {"change" or "change · <task>": {name: {mean,
    ci_low, ci_high, n}}}; empty unless both evaluations kept their per-problem scores."""
    before, after = summary.get("before"), summary.get("after")
    if not before or not after:
        return {}
    pairs = [("change", before, after)] + [
        (f"change · {task}", before["tasks"][task], part)
        for task, part in (after.get("tasks") or {}).items()
        if task in (before.get("tasks") or {})
    ]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, b, a in pairs:
        for name, s in (a.get("scores") or {}).items():
            old = (b.get("scores") or {}).get(name, {}).get("values")
            new = s.get("values")
            if old is None or new is None or len(old) != len(new):
                continue
            mean, low, high = paired_change(old, new)
            out.setdefault(label, {})[name] = {
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "n": len(new),
            }
    return out


def start_run(
    cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool, console: Console
) -> tuple[torch.device, Path | None]:
    """What every stage does first: the run directory (checked, or its checkpoint found), the
    saved config.yaml, the sizes table, the seed. Returns the device and the checkpoint to
    resume from (None for a fresh run)."""
    resume_from = prepare_run_dir(run_dir, resume, overwrite, console)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    _print_sizes(console, cfg, run_dir)
    seed_everything(cfg.seed)
    return pick_device(cfg.model.device), resume_from


def run(
    cfg: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the recipe ``cfg`` in ``run_dir``; returns the summary written to summary.json.
    The run holds the directory's lock from start to end: a second run there is refused."""
    check_config(cfg)  # every model, file and verifier it names, before anything slow
    console = console or Console()
    with locked(run_dir):
        if cfg.stage == "rm":
            from reasonrl.train.rm import run_rm_stage

            return run_rm_stage(cfg, run_dir, resume=resume, overwrite=overwrite, console=console)
        return _run_policy_stage(cfg, run_dir, resume, overwrite, console)


def _run_policy_stage(
    cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool, console: Console
) -> dict[str, Any]:
    """An sft, dpo or rl stage: evaluate, train, evaluate again, the summary and report."""
    t0 = time.time()
    device, resume_from = start_run(cfg, run_dir, resume, overwrite, console)

    train, held_out = load_splits(cfg.task)
    model, tokenizer = build_model(cfg, train, resume_from, device)
    console.print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device}; "
        f"{len(train)} train / {len(held_out)} held-out problems"
    )
    render = lambda s: render_prompt(s, tokenizer, cfg.task.prompt, cfg.task.chat_template)  # noqa: E731
    eval_prompts = [render(s) for s in held_out]
    make_engine = ENGINES[cfg.rollout.engine]  # hf or fast, for rollouts and evaluation
    engine = make_engine(model, tokenizer, cfg.rollout.batch_completions)
    eval_engine = make_engine(model, tokenizer, cfg.eval.batch_completions)

    n_eval = eval_size(cfg.eval, len(held_out))

    def run_eval(tag: str) -> dict[str, Any]:
        with console.status(f"evaluating ({tag}) on {n_eval} held-out problems"):
            return evaluate(eval_engine, eval_prompts, held_out, cfg.eval, reward_scorers(cfg))

    before_path = run_dir / BEFORE_FILE
    before = None
    if cfg.eval.before and cfg.model.init is None:
        if before_path.exists():
            before = json.loads(before_path.read_text())
        if before is None or before["n"] != n_eval:  # none yet, or saved under another eval.limit
            before = run_eval("before")
            before_path.write_text(json.dumps(before, indent=2))
        print_summary(console, {"before": before})

    def on_step(step: int) -> None:
        if cfg.eval.every and step % cfg.eval.every == 0:
            quick = evaluate(
                eval_engine,
                eval_prompts,
                held_out,
                cfg.eval.model_copy(update={"k": 0, "limit": cfg.eval.every_limit}),
            )
            logger.log(step, {"eval/accuracy": quick["accuracy"]})

    start_step = int(resume_from.name.split("-")[1]) if resume_from else None
    with RunLogger.for_run(cfg, run_dir, start_step) as logger:
        if before is not None and start_step is None:
            logger.log(0, {"eval/accuracy": before["accuracy"]})
        if cfg.stage == "sft":
            from reasonrl.train.sft import train_sft

            pairs = [(render(s), c) for s, c in sft_pairs(cfg, train)]
            steps = train_sft(cfg, model, tokenizer, pairs, run_dir, logger, resume_from, on_step)
        elif cfg.stage == "dpo":
            from reasonrl.tasks.preferences import encode_pairs, load_preference_pairs
            from reasonrl.train.dpo import train_dpo

            data = cfg.dpo.data
            train_text, eval_text = load_preference_pairs(data, tokenizer, train, held_out, render)
            train_enc, cut_train = encode_pairs(train_text, tokenizer, data.max_length)
            eval_enc, cut_eval = encode_pairs(eval_text, tokenizer, data.max_length)
            console.print(
                f"preference pairs: {len(train_enc)} train ({cut_train} truncated), "
                f"{len(eval_enc)} held-out ({cut_eval} truncated) at max_length {data.max_length}"
            )
            steps = train_dpo(
                cfg, model, tokenizer, train_enc, eval_enc, run_dir, logger, resume_from, on_step
            )
        else:
            from reasonrl.train.rl import train_rl

            ref = None  # under LoRA the reference is the policy with its adapters disabled
            if cfg.algo.beta > 0 and cfg.model.lora is None:
                ref = copy.deepcopy(model) if resume_from is None else load_base(cfg.model, device)
                ref.eval().requires_grad_(False)
            critic = build_critic(cfg, resume_from, device)
            memory = rl_memory(cfg, model, ref, critic)
            console.print(
                "weights in memory (MiB): "
                + ", ".join(f"{k.removesuffix('_mib')} {v:.1f}" for k, v in memory.items())
            )
            prompts = [render(s) for s in train]
            steps = train_rl(
                cfg,
                model,
                ref,
                tokenizer,
                engine,
                prompts,
                train,
                run_dir,
                logger,
                resume_from,
                on_step,
                critic,
            )
            memory[f"peak_{device.type}_mib"] = peak_memory_mib(device)
        save_model(model, tokenizer, run_dir / MODEL_DIR, cfg.model.lora)
        after = run_eval("after") if cfg.eval.after else None
        if after is not None:
            logger.log(steps, {"eval/accuracy": after["accuracy"]})

    summary = {
        "name": cfg.name,
        "stage": cfg.stage,
        "steps": steps,
        "before": before,
        "after": after,
        "wall_s": time.time() - t0,
        "model_dir": str(run_dir / MODEL_DIR),
    }
    if cfg.stage == "rl":
        summary["memory"] = memory
    if changes := score_changes(summary):
        summary["score_changes"] = changes
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    print_summary(console, summary)
    from reasonrl.report import build_report

    report = build_report(run_dir)
    console.print(f"report: {report}")
    return summary
