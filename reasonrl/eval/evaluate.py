"""Evaluate a policy on held-out samples, each checked by its own task's rule (``correct``).

Under several ranks each rank generates and checks its block of the problems (``shard(n,
ranks, even=False)``), the per-problem results are gathered on every rank and the statistics
are computed once from them, in problem order. pass@k samples are drawn with per-problem seeds
(``eval_seeds``), so the numbers do not depend on which rank draws them, nor on the world size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from reasonrl.config import EvalConfig, RunConfig, TaskConfig
from reasonrl.distributed import Ranks, all_gather_objects, shard
from reasonrl.eval.stats import mean_ci, pass_at_k, wilson_interval
from reasonrl.rewards.correct import CorrectVerifier
from reasonrl.rollout.base import Rollout, RolloutEngine
from reasonrl.rollout.sampling import eval_seeds
from reasonrl.tasks.base import Sample

if TYPE_CHECKING:
    from reasonrl.envs import ToolUse


@functools.cache
def _checker() -> CorrectVerifier:
    return CorrectVerifier()  # one sandbox for every evaluation of the process


def _correct(texts: Sequence[str], samples: Sequence[Sample]) -> list[bool]:
    return [r.score == 1.0 for r in _checker().batch(texts, samples)]


def _mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean score with its CI, and the per-problem scores (in problem order) for a paired
    comparison with another evaluation of the same problems."""
    mean, low, high = mean_ci(values, clip=False)
    return {"mean": mean, "ci_low": low, "ci_high": high, "values": list(values)}


def _per_task(
    samples: Sequence[Sample],
    correct: Sequence[bool],
    per_problem: Sequence[int],
    k: int,
    scores: Mapping[str, Sequence[float]],
    calls: Sequence[int],
    sampled_calls: Sequence[float],
) -> dict[str, dict[str, Any]]:
    """Greedy accuracy (Wilson CI), pass@k, mean scores and tool calls per greedy (and per
    sampled) episode of each task of a mix, or difficulty (``Sample.group``)."""
    rows: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        rows.setdefault(sample.group, []).append(i)
    if len(rows) < 2:
        return {}
    out = {}
    for task, idx in rows.items():
        hits = sum(correct[i] for i in idx)
        low, high = wilson_interval(hits, len(idx))
        res: dict[str, Any] = {"accuracy": hits / len(idx), "n": len(idx)}
        res.update(ci_low=low, ci_high=high, pass_at_k={})
        for kk in sorted({1, k}) if per_problem else ():
            res["pass_at_k"][str(kk)] = mean_ci([pass_at_k(k, per_problem[i], kk) for i in idx])[0]
        if scores:
            res["scores"] = {name: _mean_ci([v[i] for i in idx]) for name, v in scores.items()}
        if calls:
            res["tool_calls_per_episode"] = sum(calls[i] for i in idx) / len(idx)
        if sampled_calls:
            res["sampled_tool_calls_per_episode"] = sum(sampled_calls[i] for i in idx) / len(idx)
        out[task] = res
    return out


Scorer = Callable[[Sequence[str], Sequence[Sample]], list[float]]


def reward_scorers(cfg: RunConfig) -> dict[str, Any]:
    """Raw-score functions of the recipe's learned reward terms (``reward_model`` verifiers),
    so that evaluations report what the reward model thinks of the greedy completions."""
    from reasonrl.rewards.compose import reward_terms

    learned = {n for n, s in cfg.rewards.items() if s.verifier == "reward_model"}
    if cfg.stage != "rl" or not learned:
        return {}
    # the same verifier instances the training rewards use (one copy of each reward model)
    return {t.name: t.verifier.raw_scores for t in reward_terms(cfg.rewards) if t.name in learned}


EXAMPLES = 5  # greedy completions kept in a result, the first problems'


def eval_size(cfg: EvalConfig, available: int) -> int:
    """How many of ``available`` held-out problems an evaluation scores: the first
    ``cfg.limit``, or all of them."""
    return min(cfg.limit or available, available)


def evaluate(
    engine: RolloutEngine,
    prompts: Sequence[str],
    samples: Sequence[Sample],
    cfg: EvalConfig,
    scorers: Mapping[str, Scorer] | None = None,
    *,
    seed: int = 0,
    ranks: Ranks = Ranks(),
    tools: ToolUse | None = None,
    task: TaskConfig | None = None,
) -> dict[str, Any]:
    """Greedy accuracy (pass@1) with a Wilson 95% CI, and unbiased pass@k from ``cfg.k`` samples per
    problem (sample j of problem i drawn with seed ``eval_seeds(seed, [i], k)[j]``) with a
    normal 95% CI over problems. ``scorers`` (name → function of texts and samples, e.g. a
    reward model's raw score) also score the greedy completions. Every rank calls it and gets
    the same result (each generates its share of the problems). ``tools`` (``rollout.tools``)
    with ``tools.max_turns`` > 1: every completion is an episode with its own toolbox, graded on
    what the model wrote (never a tool's answer), and the result adds ``tool_calls_per_episode``
    (of the greedy episodes) and, with ``cfg.k`` samples, ``sampled_tool_calls_per_episode``
    (how often the policy calls: a greedy choice hides a minority habit), overall and per group.
    An episode's prompt is then built as training builds it (``ToolUse.episodes`` with
    ``task``'s prompt and template: a chat model's tool schemas, the environment's ``reset``
    text), not taken from ``prompts``.

    Returns ``{"accuracy", "n", "ci_low", "ci_high", "pass_at_k": {k: value},
    "pass_at_k_ci": {k: [low, high]}, "scores": {name: {"mean", "ci_low", "ci_high"}},
    "examples": [...]}``, and for a task mix or several difficulties ``"tasks": {name:
    {"accuracy", "n", "ci_low", "ci_high", "pass_at_k", "scores"}}`` (``Sample.group``).
    """
    n = eval_size(cfg, len(prompts))
    prompts, samples = prompts[:n], samples[:n]
    mine = shard(n, ranks, even=False)
    episodes = None
    if tools is not None and tools.max_turns > 1:
        episodes = (tools, task or TaskConfig())
    texts, correct, scores, per_problem, calls, sampled_calls = _gathered(
        _evaluate_shard(engine, prompts, samples, cfg, scorers or {}, seed, mine, episodes), ranks
    )
    hits = sum(correct)
    low, high = wilson_interval(hits, n)
    result: dict[str, Any] = {
        "accuracy": hits / n,
        "n": n,
        "ci_low": low,
        "ci_high": high,
        "pass_at_k": {},
        "pass_at_k_ci": {},
        "examples": [
            {"prompt": samples[i].prompt, "completion": texts[i], "correct": correct[i]}
            for i in range(min(EXAMPLES, n))
        ],
    }
    if scorers:
        result["scores"] = {name: _mean_ci(values) for name, values in scores.items()}
    if cfg.k >= 1:
        for k in sorted({1, cfg.k}):
            mean, lo, hi = mean_ci([pass_at_k(cfg.k, c, k) for c in per_problem])
            result["pass_at_k"][str(k)] = mean
            result["pass_at_k_ci"][str(k)] = [lo, hi]
    if episodes is not None:
        result["tool_calls_per_episode"] = sum(calls) / n
    if sampled_calls:
        result["sampled_tool_calls_per_episode"] = sum(sampled_calls) / n
    tasks = _per_task(samples, correct, per_problem, cfg.k, scores, calls, sampled_calls)
    if tasks:
        result["tasks"] = tasks
    return result


Shard = tuple[list[str], list[bool], dict[str, list[float]], list[int], list[int], list[float]]


def _evaluate_shard(
    engine: RolloutEngine,
    prompts: Sequence[str],
    samples: Sequence[Sample],
    cfg: EvalConfig,
    scorers: Mapping[str, Scorer],
    seed: int,
    mine: range,
    episodes: tuple[ToolUse, TaskConfig] | None = None,
) -> Shard:
    """Problems ``mine``: greedy completions, their correctness, their scores, the number of
    correct pass@k samples of each problem (empty when ``cfg.k`` is 0), the tool calls of each
    greedy episode and the mean of each problem's sampled ones (empty without ``episodes``:
    the tools and the task whose prompt the episodes' prompts are rendered
    with; the sampled ones also when ``cfg.k`` is 0)."""
    s = cfg.sampling
    prompts, samples = list(prompts[mine.start : mine.stop]), samples[mine.start : mine.stop]

    def tool_loop(rows: Sequence[Sample], texts: list[str]) -> tuple[list[str], dict[str, Any]]:
        """The prompts and generate() arguments of ``rows``: each an episode with its own
        toolbox and environment when the run has tools."""
        if episodes is None:
            return texts, {}
        tools, task = episodes
        return tools.generate_args(rows, engine.tokenizer, task)

    greedy_prompts, loop = tool_loop(samples, prompts)
    greedy = engine.generate(greedy_prompts, max_new_tokens=s.max_new_tokens, greedy=True, **loop)
    graded = _model_texts(greedy)
    correct = _correct(graded, samples)
    scores = {name: scorer(graded, samples) for name, scorer in scorers.items()}
    calls = [e.calls_made for e in greedy.episodes or []]
    per_problem: list[int] = []
    sampled_calls: list[float] = []
    if cfg.k >= 1:
        rows = [x for x in samples for _ in range(cfg.k)]
        sampled_prompts, loop = tool_loop(rows, [p for p in prompts for _ in range(cfg.k)])
        sampled = engine.generate(
            sampled_prompts,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            seeds=eval_seeds(seed, mine, cfg.k),
            **loop,
        )
        ok = _correct(_model_texts(sampled), rows)
        per_problem = [sum(ok[i * cfg.k : (i + 1) * cfg.k]) for i in range(len(prompts))]
        if sampled.episodes is not None:
            made = [e.calls_made for e in sampled.episodes]
            sampled_calls = [
                sum(made[i * cfg.k : (i + 1) * cfg.k]) / cfg.k for i in range(len(prompts))
            ]
    return list(greedy.texts), correct, scores, per_problem, calls, sampled_calls


def _model_texts(rollout: Rollout) -> list[str]:
    """The texts graded: what the model wrote (an episode's tool answers left out)."""
    if rollout.episodes is None:
        return list(rollout.texts)
    return [e.model_text for e in rollout.episodes]


def _gathered(part: Shard, ranks: Ranks) -> Shard:
    """Every rank's shard joined in rank (= problem) order, on every rank."""
    parts = all_gather_objects(part, ranks)
    if len(parts) == 1:
        return part
    scores = {name: [v for p in parts for v in p[2][name]] for name in part[2]}
    return (
        [t for p in parts for t in p[0]],
        [c for p in parts for c in p[1]],
        scores,
        [c for p in parts for c in p[3]],
        [c for p in parts for c in p[4]],
        [c for p in parts for c in p[5]],
    )
