"""build_report and build_comparison_report on small hand-made run directories."""

import base64
import html
import json
import re
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from reasonrl import report
from reasonrl.logging import RunLogger
from reasonrl.report import build_comparison_report, build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = "algo: grpo\nstop: '</answer>'\nnote: a & b\n"

SUMMARY = {
    "before": {
        "accuracy": 0.412,
        "n": 500,
        "ci_low": 0.370,
        "ci_high": 0.455,
        "pass_at_k": {"8": 0.70},
    },
    "after": {
        "accuracy": 0.480,
        "n": 500,
        "ci_low": 0.436,
        "ci_high": 0.524,
        "pass_at_k": {"8": 0.75},
    },
    "wall_s": 3723.4,
}


def _make_run(run_dir: Path, *, scale: float = 1.0, entropy: bool = False) -> Path:
    with RunLogger(run_dir, report_to=()) as logger:
        for step in range(10):
            metrics = {
                "reward/mean": scale * step / 10,
                "reward/format": 1.0,
                "loss/policy": -0.1 * step,
                "loss/kl": 0.01,
                "kl/mean": float("nan") if step == 3 else 0.001 * step,
                "perf/step_s": 1.5,
            }
            if entropy:
                metrics["entropy/mean"] = 2.0 - 0.1 * step
            logger.log(step, metrics)
            if step % 5 == 0 or step == 9:
                logger.log(step, {"eval/accuracy": 0.4 + 0.01 * step})
    return run_dir


def _images(page: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    ]


def test_report_has_plots_for_present_metrics_only(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path / "grpo-gsm8k")
    (run_dir / "summary.json").write_text(json.dumps(SUMMARY))
    (run_dir / "config.yaml").write_text(CONFIG)

    path = build_report(run_dir)

    assert path == run_dir / "report.html"
    pngs = {p.name for p in (run_dir / "plots").iterdir()}
    assert pngs == {"reward.png", "accuracy.png", "kl.png", "loss.png"}
    page = path.read_text()
    images = _images(page)
    assert page.count("<img") == len(images) == 4
    assert all(img.startswith(PNG_MAGIC) for img in images)
    assert "<h1>grpo-gsm8k</h1>" in page


def test_report_tables_the_summary_and_escapes_the_config(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path / "run")
    (run_dir / "summary.json").write_text(json.dumps(SUMMARY))
    (run_dir / "config.yaml").write_text(CONFIG)

    page = build_report(run_dir).read_text()

    assert "41.2% [37.0, 45.5]" in page
    assert "48.0% [43.6, 52.4]" in page
    assert "+6.8 pts" in page  # accuracy change
    assert "+5.0 pts" in page  # pass@8 change
    assert "pass@8" in page and "<td>500</td>" in page
    assert "1h 02m 03s" in page
    pre = re.search(r"<pre>(.*)</pre>", page, re.S).group(1)
    assert "<" not in pre and "&lt;/answer&gt;" in pre and "a &amp; b" in pre
    assert html.unescape(pre) == CONFIG


def test_report_without_summary_config_or_evals(tmp_path: Path) -> None:
    run_dir = tmp_path / "bare"
    with RunLogger(run_dir, report_to=()) as logger:
        logger.log(0, {"response/length_mean": 120.0})
        logger.log(1, {"response/length_mean": float("nan")})
        logger.log(2, {"response/length_mean": 140.0})
    # A plot left by an earlier build, for a metric no longer logged, is removed.
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "reward.png").write_bytes(PNG_MAGIC)

    page = build_report(run_dir).read_text()

    assert [p.name for p in (run_dir / "plots").iterdir()] == ["response_length.png"]
    assert page.count("<img") == 1
    assert "<table" not in page and "<pre>" not in page and "Wall time" not in page


def test_report_with_only_the_after_evaluation(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path / "run")
    (run_dir / "summary.json").write_text(json.dumps({"after": SUMMARY["after"]}))

    page = build_report(run_dir).read_text()

    assert "48.0% [43.6, 52.4]" in page
    assert "before" not in page.split("<table")[1] and "pts" not in page


def test_comparison_has_one_legend_entry_per_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_a = _make_run(tmp_path / "grpo", entropy=True)
    run_b = _make_run(tmp_path / "dr_grpo", scale=0.5)
    (run_a / "summary.json").write_text(json.dumps(SUMMARY))

    # Keep the drawn figures so their legends can be checked, not just their files.
    figures: dict[str, Figure] = {}
    save = report._save

    def keep(fig: Figure, path: Path) -> Path:
        figures[path.name] = fig
        return save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    path = build_comparison_report([run_a, run_b], tmp_path / "compare")

    assert path == tmp_path / "compare" / "report.html"
    plots = tmp_path / "compare" / "plots"
    expected = {"reward.png", "accuracy.png", "kl.png", "loss.png", "entropy.png"}
    assert {p.name for p in plots.iterdir()} == expected
    assert all((plots / name).read_bytes().startswith(PNG_MAGIC) for name in expected)

    def legend(name: str) -> list[str]:
        (fig_legend,) = figures[name].legends
        return [t.get_text() for t in fig_legend.get_texts()]

    # Multi-key groups draw a panel per key but still name each run once.
    assert len(figures["reward.png"].axes) == 2
    assert legend("reward.png") == ["grpo", "dr_grpo"]
    assert legend("loss.png") == ["grpo", "dr_grpo"]
    assert legend("entropy.png") == ["grpo"]

    page = path.read_text()
    assert page.count("<img") == len(expected)
    assert "<td>grpo</td>" in page and "<td>dr_grpo</td>" in page
    assert "+6.8 pts" in page


def test_comparison_disambiguates_runs_with_the_same_name(tmp_path: Path) -> None:
    run_a = _make_run(tmp_path / "seed0" / "run")
    run_b = _make_run(tmp_path / "seed1" / "run")

    page = build_comparison_report([run_a, run_b], tmp_path / "compare").read_text()

    assert "<td>seed0/run</td>" in page and "<td>seed1/run</td>" in page


def test_reward_plot_leaves_out_counts_and_spread():
    from reasonrl.report import GROUPS

    reward = next(g for g in GROUPS if g.stem == "reward")
    keys = [
        "reward/mean",
        "reward/std",
        "reward/answer",
        "reward/answer/uncomputed",
        "reward/uncomputed",
    ]
    assert reward.select(keys) == ["reward/mean", "reward/answer"]


def test_report_and_console_table_break_a_mix_down_by_task(tmp_path: Path) -> None:
    from rich.console import Console

    from reasonrl.eval.summary import print_summary

    def task(acc: float, n: int) -> dict:
        return {
            "accuracy": acc,
            "n": n,
            "ci_low": acc - 0.1,
            "ci_high": acc + 0.1,
            "pass_at_k": {"8": acc + 0.2},
        }

    summary = json.loads(json.dumps(SUMMARY))
    summary["before"]["tasks"] = {"chain_sum": task(0.5, 400), "linear_function": task(0.1, 100)}
    summary["after"]["tasks"] = {"chain_sum": task(0.52, 400), "linear_function": task(0.3, 100)}
    run_dir = _make_run(tmp_path / "run")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    rows = re.findall(r"<tr>(.*?)</tr>", build_report(run_dir).read_text())
    cells = [re.findall(r"<td>(.*?)</td>", r) for r in rows]
    assert ["change · linear_function", "+20.0 pts", "", "+20.0 pts"] in cells
    assert ["after · chain_sum", "52.0% [42.0, 62.0]", "400", "72.0%"] in cells
    console = Console(record=True, width=200)
    print_summary(console, summary)
    text = console.export_text()
    assert (
        "change · chain_sum" in text and "+2.0 pts" in text and "before · linear_function" in text
    )


def test_report_tables_the_reward_model_scores_and_their_paired_change(tmp_path: Path) -> None:
    summary = json.loads(json.dumps(SUMMARY))
    score = {"mean": -7.5, "ci_low": -7.968, "ci_high": -7.032, "values": [-7.0, -8.0]}
    summary["before"]["scores"] = {"rm": score}
    summary["after"]["scores"] = {"rm": {**score, "mean": -1.321, "values": [-1.0, -1.6]}}
    summary["after"]["tasks"] = {"chain_sum": {**summary["after"], "scores": {"rm": score}}}
    change = {"mean": 6.178, "ci_low": 5.723, "ci_high": 6.634, "n": 500}
    summary["score_changes"] = {"change": {"rm": change}}
    run_dir = _make_run(tmp_path / "run")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    page = build_report(run_dir).read_text()
    cells = [re.findall(r"<td>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", page)]
    assert ["before", "rm", "-7.500 [-7.968, -7.032]", "2"] in cells
    assert ["after · chain_sum", "rm", "-7.500 [-7.968, -7.032]", "2"] in cells
    assert ["change", "rm", "+6.178 [+5.723, +6.634] (paired)", "500"] in cells
    assert "Reward-model scores" not in build_report(_make_run(tmp_path / "plain")).read_text()


def test_report_shows_the_last_steps_samples_as_the_model_saw_them(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"

    def sample(step: int, answer_score: float, truncated: bool) -> dict:
        return {
            "prompt": f"<|im_start|>user\n{step} + 1 =<|im_end|>\n<|im_start|>assistant\n",
            "completion": f"<think>…</think><answer>{step + 1}</answer>",
            "gold_answer": str(step + 1),
            "reward": answer_score + 0.1,
            "rewards": {"answer": answer_score, "format": 1.0},
            "tokens": {"prompt": 12, "completion": 9},
            "truncated": truncated,
        }

    with RunLogger(run_dir, report_to=()) as logger:
        logger.log(1, {"reward/mean": 0.1})
        logger.log_samples(1, [sample(1, 0.0, False)])
        logger.log_samples(7, [sample(7, 1.0, False), sample(41, 0.0, True)])

    page = build_report(run_dir).read_text()

    assert "<h2>Samples at step 7</h2>" in page and "3 samples from 2 steps" in page
    table = page[page.index('<table class="samples">') :]
    table = table[: table.index("</table>")]
    head = ["prompt", "completion", "gold answer", "reward", "answer", "format"]
    assert re.findall(r"<th>([^<]*)</th>", table) == head
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", table, re.S)
    assert len(rows) == 2  # the last step's only
    cells = rows[0].split("</td><td>")
    assert html.unescape(cells[0]) == (
        "<pre><|im_start|>user\n7 + 1 =<|im_end|>\n<|im_start|>assistant\n</pre>"
        "<small>12 tokens</small>"
    )
    assert cells[2:] == ["8", "1.1", "1", "1"]
    assert "9 tokens · truncated" in rows[1] and "truncated" not in rows[0]


def test_a_run_written_before_the_optimizer_keys_were_namespaced_plots_the_same(
    tmp_path: Path,
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for run_dir, (lr, grad_norm) in (
        (old, ("lr", "grad_norm")),
        (new, ("optim/lr", "optim/grad_norm")),
    ):
        with RunLogger(run_dir, report_to=()) as logger:
            for step in range(1, 4):
                logger.log(step, {"loss/sft": 1.0 / step, lr: 1e-3 * step, grad_norm: 0.5 + step})
    assert report._load_series(old) == report._load_series(new)
    for run_dir in (old, new):
        build_report(run_dir)
        pngs = {p.name for p in (run_dir / "plots").iterdir()}
        assert pngs == {"loss.png", "grad_norm.png", "lr.png"}
    page = build_comparison_report([old, new], tmp_path / "both").read_text()
    assert "Learning rate" in page and "Gradient norm" in page


def test_report_plots_tool_use_by_difficulty_and_tables_calls_before_and_after(tmp_path):
    run_dir = tmp_path / "tools"
    with RunLogger(run_dir, report_to=()) as logger:
        for step in range(1, 6):
            logger.log(
                step,
                {
                    "reward/mean": 0.1 * step,
                    "tools/calls_per_episode": 0.5,
                    "tools/calls_per_episode/sum/hard": 0.5 + 0.1 * step,
                    "tools/calls_per_episode/sum/easy": 0.5 - 0.1 * step,
                },
            )

    def result(acc: float, hard: float, easy: float) -> dict:
        tasks = {
            "sum/hard": {
                "accuracy": acc,
                "n": 10,
                "tool_calls_per_episode": hard,
                "sampled_tool_calls_per_episode": hard / 2,
            },
            "sum/easy": {"accuracy": acc, "n": 10, "tool_calls_per_episode": easy},
        }
        return {"accuracy": acc, "n": 20, "tool_calls_per_episode": (hard + easy) / 2} | {
            "tasks": tasks
        }

    summary = {"before": result(0.1, 0.25, 0.5), "after": result(0.6, 1.0, 0.0)}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    page = build_report(run_dir).read_text()
    assert (run_dir / "plots" / "tool_use.png").exists()
    assert "Tool calls per episode" in page
    header = re.findall(r"<th>(.*?)</th>", page)
    assert header[-1] == "tool calls/episode: greedy (sampled)"
    cells = [re.findall(r"<td>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", page)]
    assert ["change · sum/hard", "+50.0 pts", "", "+0.75 (+0.38)"] in cells
    assert ["change · sum/easy", "+50.0 pts", "", "-0.50"] in cells
    assert ["before · sum/hard", "10.0%", "10", "0.25 (0.12)"] in cells
