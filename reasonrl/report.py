"""HTML reports of finished runs: metric plots, the before/after evaluation, the last logged
samples, the config.

``build_report(run_dir)`` turns one run directory into ``run_dir/report.html``;
``build_comparison_report(run_dirs, out)`` puts several runs on the same axes.
Pages are self-contained (plots embedded as base64 PNGs) so they can be mailed or attached.

Plots are drawn on ``matplotlib.figure.Figure`` with the Agg canvas rather than through
``pyplot``, so building a report never touches the global backend or leaks open figures.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.logging import METRICS_FILE, SAMPLES_FILE, read_jsonl

Series = dict[str, list[tuple[int, float]]]  # metric key -> [(step, value)] sorted by step


@dataclass(frozen=True)
class _Group:
    """One plot: the named keys first (in this order), then every key under ``prefix`` except
    those ending in one of ``skip`` (counts and spreads that would flatten the scale)."""

    stem: str
    title: str
    keys: tuple[str, ...] = ()
    prefix: str | None = None
    skip: tuple[str, ...] = ()

    def select(self, available: Sequence[str]) -> list[str]:
        chosen = [k for k in self.keys if k in available]
        if self.prefix is not None:
            chosen += sorted(
                k
                for k in available
                if k.startswith(self.prefix) and k not in chosen and not k.endswith(self.skip)
            )
        return chosen


GROUPS = (
    _Group("reward", "Reward", ("reward/mean",), "reward/", ("uncomputed", "/std")),
    _Group("accuracy", "Accuracy", ("eval/accuracy", "reward/accuracy")),
    _Group(
        "tool_use",
        "Tool calls per episode",
        ("tools/calls_per_episode", "eval/tool_calls_per_episode"),
        "tools/calls_per_episode/",  # by problem group: does the model call where it pays?
    ),
    _Group("kl", "KL", ("kl/mean",)),
    _Group("response_length", "Response length (tokens)", ("response/length_mean",)),
    _Group("entropy", "Entropy", ("entropy/mean",)),
    _Group(
        "pairwise",
        "Held-out pairwise accuracy",
        ("eval/pairwise_accuracy",),
        "eval/pairwise_accuracy/",  # by kind of rejected response
    ),
    _Group("loss", "Loss", (), "loss/"),
    _Group("grad_norm", "Gradient norm (before clipping)", ("optim/grad_norm",)),
    _Group("lr", "Learning rate", ("optim/lr",)),
)

# Keys that have been renamed: a run directory written before the rename plots the same.
RENAMED = {"lr": "optim/lr", "grad_norm": "optim/grad_norm"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _load_series(run_dir: Path) -> Series:
    """Per-key ``(step, value)`` points from ``metrics.jsonl`` under today's key names
    (``RENAMED``); nulls and stepless lines skipped."""
    path = run_dir / METRICS_FILE
    series: Series = {}
    if not path.exists():
        return series
    for record in read_jsonl(path):
        step = record.get("step")
        if not _is_number(step):
            continue
        for key, value in record.items():
            if key != "step" and _is_number(value):
                series.setdefault(RENAMED.get(key, key), []).append((int(step), float(value)))
    for points in series.values():
        points.sort(key=lambda p: p[0])
    return series


def _load_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _plot_line(
    ax: Any, points: list[tuple[int, float]], label: str, color: str | None = None
) -> None:
    steps, values = zip(*points, strict=True)
    # Evaluations are sparse: markers keep a handful of points readable as points.
    marker = "o" if len(points) <= 30 else None
    ax.plot(steps, values, label=label, color=color, marker=marker, markersize=3, linewidth=1.2)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def _plot_run(series: Series, plots_dir: Path) -> list[tuple[str, Path]]:
    """One PNG per metric group present in ``series``, one line per key."""
    plots = []
    for group in GROUPS:
        keys = group.select(list(series))
        if not keys:
            # A rerun after a metric disappeared must not leave its old plot behind.
            (plots_dir / f"{group.stem}.png").unlink(missing_ok=True)
            continue
        fig = Figure(figsize=(6.4, 3.6), layout="constrained")
        ax = fig.subplots()
        for key in keys:
            _plot_line(ax, series[key], key)
        ax.set_title(group.title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        plots.append((group.title, _save(fig, plots_dir / f"{group.stem}.png")))
    return plots


def _plot_comparison(runs: Mapping[str, Series], plots_dir: Path) -> list[tuple[str, Path]]:
    """One PNG per metric group: a panel per key, a line per run, one legend entry per run."""
    plots = []
    for group in GROUPS:
        available = sorted({k for series in runs.values() for k in series})
        keys = group.select(available)
        if not keys:
            # A rerun after a metric disappeared must not leave its old plot behind.
            (plots_dir / f"{group.stem}.png").unlink(missing_ok=True)
            continue
        fig = Figure(figsize=(6.4, 3.2 * len(keys)), layout="constrained")
        axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
        for ax, key in zip(axes, keys, strict=True):
            # Cycle colours by run index, not by drawn line, so a run keeps its colour
            # across panels even when it lacks some keys.
            for i, (name, series) in enumerate(runs.items()):
                if key in series:
                    _plot_line(ax, series[key], name, color=f"C{i}")
            ax.set_title(key, fontsize="medium")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        handles = _legend_handles(axes, list(runs))
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(len(handles), 4),
            fontsize="small",
        )
        fig.suptitle(group.title)
        plots.append((group.title, _save(fig, plots_dir / f"{group.stem}.png")))
    return plots


def _legend_handles(axes: Sequence[Any], names: list[str]) -> list[Any]:
    """The first line drawn for each run name, in run order (a run may skip some panels)."""
    first = {}
    for ax in axes:
        for line in ax.get_lines():
            first.setdefault(line.get_label(), line)
    return [first[name] for name in names if name in first]


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if _is_number(value) else "–"


def _accuracy_cell(result: Mapping[str, Any]) -> str:
    """``41.2% [37.0, 45.5]``: accuracy with its 95% CI, in percent."""
    text = _pct(result.get("accuracy"))
    low, high = result.get("ci_low"), result.get("ci_high")
    if _is_number(low) and _is_number(high):
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    return text


def _delta(before: Any, after: Any) -> str:
    """The change in percentage points, signed."""
    if not (_is_number(before) and _is_number(after)):
        return "–"
    return f"{100 * (after - before):+.1f} pts"


def _pass_ks(results: Sequence[Mapping[str, Any]]) -> list[str]:
    ks = {str(k) for r in results for k in (r.get("pass_at_k") or {})}
    return sorted(ks, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))


def calls_cell(result: Mapping[str, Any]) -> str:
    """Tool calls per greedy episode, and per sampled one where measured: ``0.00 (0.31)``."""
    greedy, sampled = (
        result.get("tool_calls_per_episode"),
        result.get("sampled_tool_calls_per_episode"),
    )
    if greedy is None:
        return ""
    return f"{greedy:.2f}" + ("" if sampled is None else f" ({sampled:.2f})")


def calls_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """The change of ``calls_cell``'s numbers from ``before`` to ``after``: ``+0.75 (+0.40)``."""
    parts = []
    for key in ("tool_calls_per_episode", "sampled_tool_calls_per_episode"):
        b, a = before.get(key), after.get(key)
        if b is not None and a is not None:
            parts.append(f"{a - b:+.2f}")
    return parts[0] + "".join(f" ({p})" for p in parts[1:]) if parts else ""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_table(summary: Mapping[str, Any]) -> str:
    """Before/after rows (accuracy [95% CI], n, pass@k) and a change row, then the same for
    each task of a mix; '' if there is neither."""
    phases = [(name, summary[name]) for name in ("before", "after") if summary.get(name)]
    if not phases:
        return ""
    tasks = sorted({t for _, r in phases for t in r.get("tasks") or {}})
    groups = [("", dict(phases))] + [
        (f" · {t}", {name: r["tasks"][t] for name, r in phases if t in (r.get("tasks") or {})})
        for t in tasks
    ]
    ks = _pass_ks([r for _, r in phases])
    tools = any("tool_calls_per_episode" in r for _, r in phases)
    header = ["", "accuracy [95% CI]", "n"] + [f"pass@{k}" for k in ks]
    header += ["tool calls/episode: greedy (sampled)"] if tools else []
    rows = []
    for suffix, results in groups:
        rows += [
            [name + suffix, _accuracy_cell(r), str(r.get("n", "–"))]
            + [_pct((r.get("pass_at_k") or {}).get(k)) for k in ks]
            + ([calls_cell(r)] if tools else [])
            for name, r in results.items()
        ]
        if len(results) == 2:
            before, after = results["before"], results["after"]
            passk = [(before.get("pass_at_k") or {}, after.get("pass_at_k") or {})]
            rows.append(
                ["change" + suffix, _delta(before.get("accuracy"), after.get("accuracy")), ""]
                + [_delta(b.get(k), a.get(k)) for k in ks for b, a in passk]
                + ([calls_change(before, after)] if tools else [])
            )
    return _table(header, rows)


def _scores_table(summary: Mapping[str, Any]) -> str:
    """Each reward model's mean score of the greedy completions [95% CI] before and after
    (and per task of a mix), then its paired change; '' if no evaluation was scored."""
    rows = []
    for phase in ("before", "after"):
        result = summary.get(phase) or {}
        parts = [(phase, result)] + [
            (f"{phase} · {t}", r) for t, r in sorted((result.get("tasks") or {}).items())
        ]
        for label, part in parts:
            for name, sc in (part.get("scores") or {}).items():
                n = len(sc["values"]) if "values" in sc else part.get("n", "–")
                cell = f"{sc['mean']:.3f} [{sc['ci_low']:.3f}, {sc['ci_high']:.3f}]"
                rows.append([label, name, cell, str(n)])
    for label, changes in (summary.get("score_changes") or {}).items():
        for name, c in changes.items():
            cell = f"{c['mean']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] (paired)"
            rows.append([label, name, cell, str(c["n"])])
    if not rows:
        return ""
    return _table(["", "reward model", "mean score [95% CI]", "n"], rows)


def _number(value: Any) -> str:
    return f"{value:.3g}" if _is_number(value) else "–"


def _samples_section(run_dir: Path) -> str:
    """The completions of the last step in ``samples.jsonl``: the prompt as the model saw it,
    the completion, the gold answer, the reward and its components, token counts; '' if none."""
    path = run_dir / SAMPLES_FILE
    samples = read_jsonl(path) if path.exists() else []
    if not samples:
        return ""
    last = max(s.get("step", 0) for s in samples)
    shown = [s for s in samples if s.get("step", 0) == last]
    names = list(dict.fromkeys(k for s in shown for k in s.get("rewards") or {}))
    head = ["prompt", "completion", "gold answer", "reward", *names]
    rows = []
    for s in shown:
        tokens = s.get("tokens") or {}
        cut = " · truncated" if s.get("truncated") else ""
        rows.append(
            [
                _text_cell(s.get("prompt", ""), f"{tokens.get('prompt', '?')} tokens"),
                _text_cell(s.get("completion", ""), f"{tokens.get('completion', '?')} tokens{cut}"),
                html.escape(str(s.get("gold_answer", "–"))),
                _number(s.get("reward")),
                *(_number((s.get("rewards") or {}).get(n)) for n in names),
            ]
        )
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    steps = sorted({s.get("step", 0) for s in samples})
    return (
        f"<h2>Samples at step {last}</h2>\n<p>{len(samples)} samples from {len(steps)} steps in "
        f"{SAMPLES_FILE}; these are the last step's.</p>\n"
        f'<table class="samples"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'
    )


def _text_cell(text: str, note: str) -> str:
    return f"<pre>{html.escape(text)}</pre><small>{html.escape(note)}</small>"


def _wall_time(seconds: Any) -> str:
    if not _is_number(seconds):
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: right; }
td:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 1em 0; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
table.samples td { text-align: left; vertical-align: top; }
table.samples pre { white-space: pre-wrap; margin: 0; padding: 0.4em; max-width: 28em; }
"""


def _page(title: str, sections: Sequence[str]) -> str:
    body = "\n".join(s for s in sections if s)
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n"
        "</body></html>\n"
    )


def _plots_section(plots: Sequence[tuple[str, Path]]) -> str:
    if not plots:
        return "<h2>Training curves</h2><p>No metrics logged.</p>"
    return "<h2>Training curves</h2>\n" + "\n".join(_img(path, title) for title, path in plots)


def build_report(run_dir: Path) -> Path:
    """Write ``run_dir/plots/*.png`` and a self-contained ``run_dir/report.html``; return its path.

    Reads ``metrics.jsonl`` and, when present, ``summary.json``, ``samples.jsonl`` and
    ``config.yaml``.
    Metric groups with no logged values get no plot.
    """
    run_dir = Path(run_dir)
    plots_dir = run_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots = _plot_run(_load_series(run_dir), plots_dir)
    summary = _load_summary(run_dir)

    sections = []
    table = _summary_table(summary)
    if table:
        sections.append("<h2>Evaluation before / after</h2>\n" + table)
    if scores := _scores_table(summary):
        sections.append("<h2>Reward-model scores of the greedy completions</h2>\n" + scores)
    if "wall_s" in summary:
        sections.append(f"<p><b>Wall time:</b> {_wall_time(summary['wall_s'])}</p>")
    sections.append(_plots_section(plots))
    sections.append(_samples_section(run_dir))
    config_path = run_dir / "config.yaml"
    if config_path.exists():
        config = html.escape(config_path.read_text(encoding="utf-8"))
        sections.append(f"<h2>Config</h2>\n<pre>{config}</pre>")

    out = run_dir / "report.html"
    out.write_text(_page(run_dir.resolve().name, sections), encoding="utf-8")
    return out


def _run_names(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names as legend labels, prefixed by the parent when two runs share a name."""
    names = [Path(d).resolve().name for d in run_dirs]
    if len(set(names)) < len(names):
        names = [f"{Path(d).resolve().parent.name}/{Path(d).resolve().name}" for d in run_dirs]
    return names


def build_comparison_report(run_dirs: Sequence[Path], out: Path) -> Path:
    """Compare runs side by side: write ``out/plots/*.png`` and ``out/report.html``; return it.

    Each metric group gets one figure with one line per run (legend = run directory name),
    and the evaluation table one row per run.
    """
    out = Path(out)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    names = _run_names(run_dirs)
    runs = {name: _load_series(Path(d)) for name, d in zip(names, run_dirs, strict=True)}
    plots = _plot_comparison(runs, plots_dir)

    rows = []
    for name, run_dir in zip(names, run_dirs, strict=True):
        summary = _load_summary(Path(run_dir))
        before, after = summary.get("before") or {}, summary.get("after") or {}
        rows.append(
            [
                name,
                _accuracy_cell(before) if before else "–",
                _accuracy_cell(after) if after else "–",
                _delta(before.get("accuracy"), after.get("accuracy")),
                str(after.get("n", before.get("n", "–"))),
                _wall_time(summary.get("wall_s")),
            ]
        )
    header = ["run", "before [95% CI]", "after [95% CI]", "change", "n", "wall time"]
    sections = [
        "<h2>Evaluation before / after</h2>\n" + _table(header, rows),
        _plots_section(plots),
    ]

    path = out / "report.html"
    path.write_text(_page("Comparison: " + ", ".join(names), sections), encoding="utf-8")
    return path
