"""``reasonrl eval``: evaluate a model on a recipe's held-out split, outside any run.

CPU: ``reasonrl eval --model runs/quickstart/model`` (the quickstart recipe's task and eval
settings; ``eval.limit=50`` and other dotted overrides apply); ``--reward-model DIR`` adds the
mean score of the greedy completions under a saved reward model; ``--baseline
runs/x/eval_before.json`` (or an earlier ``--out``) shows it as "before", with the paired change
of each reward-model score; ``--recipe PIPELINE --stage NAME`` evaluates with one policy stage's
settings of a multi-stage recipe. With ``rollout.max_turns`` > 1 and ``rollout.tools`` the
problems are episodes with the tools, and tool calls per episode are reported beside accuracy
(per task and difficulty label). One GPU: the same command, ``model.device=auto`` picks CUDA.
Every failure the user can fix is a :class:`ConfigError`. Leaves out: several models at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from reasonrl.config import ConfigError, RunConfig


def read_baseline(path: Path) -> dict[str, Any]:
    """The results of an earlier evaluation (``--out``, or a run's eval_before.json)."""
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not read the baseline {path}: {e}") from e
    if not isinstance(before, dict) or not {"accuracy", "n", "examples"} <= before.keys():
        raise ConfigError(
            f"the baseline {path} is not the results of an evaluation (what "
            "`reasonrl eval --out` writes, or a run's eval_before.json)"
        )
    return before


def _problems(result: dict) -> tuple[int, list[str]]:
    """What identifies an evaluation's problems: their count and the first prompts it keeps as
    examples (``EXAMPLES`` of them at most)."""
    return result.get("n", 0), [e["prompt"] for e in result.get("examples", [])]


def evaluate_model(
    cfg: RunConfig,
    label: str,
    reward_models: Sequence[str],
    baseline: Path | None,
    out: Path | None,
    console: Console,
) -> dict[str, Any]:
    """Evaluate ``cfg.model`` on ``cfg.task``'s held-out split with ``cfg.eval``: greedy pass@1,
    sampled pass@k and the mean score under each reward model (the recipe's learned reward
    terms and each of ``reward_models``, ``DIR`` or ``NAME=DIR``); print the table (beside
    ``baseline``'s results when given), write the results to ``out`` as JSON when given, and
    return them."""
    from transformers import set_seed

    from reasonrl.envs import ToolUse
    from reasonrl.eval import eval_size, evaluate
    from reasonrl.eval.evaluate import EXAMPLES, reward_scorers
    from reasonrl.eval.summary import print_summary, score_changes
    from reasonrl.models import load_model, load_tokenizer, pick_device
    from reasonrl.rewards.reward_model import RewardModelVerifier
    from reasonrl.rollout import make_engine
    from reasonrl.tasks import load_splits, render_prompt

    before = read_baseline(baseline) if baseline is not None else None
    tokenizer = load_tokenizer(cfg.model.path)
    policy = load_model(cfg.model, pick_device(cfg.model.device))
    _, held_out = load_splits(cfg.task)
    limit = eval_size(cfg.eval, len(held_out))
    first = [s.prompt for s in held_out[: min(EXAMPLES, limit)]]
    if before is not None and _problems(before) != (limit, first):
        raise ConfigError(f"the baseline {baseline} was evaluated on other problems than these")
    scorers = reward_scorers(cfg)
    for spec in reward_models:
        name, _, path = spec.partition("=") if "=" in spec else (spec, "", spec)
        verifier = RewardModelVerifier(path, normalize="none", device=cfg.model.device)
        scorers[name] = verifier.raw_scores
    prompts = [
        render_prompt(s, tokenizer, cfg.task.prompt, cfg.task.chat_template) for s in held_out
    ]
    engine = make_engine(cfg.rollout, policy, tokenizer, cfg.eval.batch_completions)
    set_seed(cfg.seed)  # the same model, recipe and seed: the same sampled pass@k
    with console.status(f"evaluating {label} on {limit} problems"):
        result = evaluate(
            engine,
            prompts,
            held_out,
            cfg.eval,
            scorers,
            tools=ToolUse.from_config(cfg.rollout),
            task=cfg.task,
        )
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
    return result
