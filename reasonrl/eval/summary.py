"""The before/after summary of an evaluation: the console table (overall and per task of a
mix), the mean reward-model scores, and their paired changes between two evaluations of the
same problems. ``reasonrl run`` and ``reasonrl eval`` print it; report.html tables the same."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from reasonrl.eval.stats import paired_change
from reasonrl.report import calls_cell, calls_change


def _summary_rows(table: Table, results: dict[str, Any], tools: bool, suffix: str = "") -> None:
    """Rows of the before/after table for ``results`` (phase → eval result); ``tools``: with
    the column of tool calls per episode."""
    for phase, res in results.items():
        passk = ", ".join(f"@{k} {100 * v:.1f}%" for k, v in res.get("pass_at_k", {}).items())
        table.add_row(
            phase + suffix,
            f"{100 * res['accuracy']:.1f}% [{100 * res['ci_low']:.1f}, {100 * res['ci_high']:.1f}]",
            str(res["n"]),
            passk,
            *([calls_cell(res)] if tools else []),
        )
    if len(results) == 2:
        before, after = results["before"], results["after"]
        delta = 100 * (after["accuracy"] - before["accuracy"])
        ks = [k for k in after.get("pass_at_k", {}) if k in before.get("pass_at_k", {})]
        passk = ", ".join(
            f"@{k} {100 * (after['pass_at_k'][k] - before['pass_at_k'][k]):+.1f}" for k in ks
        )
        table.add_row(
            "change" + suffix,
            f"{delta:+.1f} pts",
            "",
            passk,
            *([calls_change(before, after)] if tools else []),
        )


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """The before/after table (and the same for each task of a mix), the mean reward-model
    scores, and their paired changes where the summary holds them (``score_changes``)."""
    phases = {p: summary[p] for p in ("before", "after") if summary.get(p)}
    if not phases:  # eval.before and eval.after both off
        return
    table = Table(title="held-out accuracy")
    tools = any("tool_calls_per_episode" in res for res in phases.values())
    for col in ("", "greedy pass@1 [95% CI]", "n", "pass@k (sampled)"):
        table.add_column(col)
    if tools:
        table.add_column("tool calls/episode: greedy (sampled)")
    _summary_rows(table, phases, tools)
    for task in sorted({t for res in phases.values() for t in res.get("tasks") or {}}):
        per_task = {p: r["tasks"][task] for p, r in phases.items() if task in r.get("tasks", {})}
        _summary_rows(table, per_task, tools, f" · {task}")
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
