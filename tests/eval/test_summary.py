"""The before/after table and the paired change of reward-model scores."""

import pytest
from rich.console import Console

from reasonrl.eval.summary import print_summary, score_changes


def test_score_changes_pair_the_problems_overall_and_per_task():
    def result(values, tasks):
        return {
            "scores": {"rm": {"values": values}},
            "tasks": {t: {"scores": {"rm": {"values": v}}} for t, v in tasks.items()},
        }

    before = result([1.0, 2.0, 3.0, 4.0], {"a": [1.0, 2.0], "b": [3.0, 4.0]})
    after = result([1.5, 2.5, 3.0, 4.0], {"a": [1.5, 2.5], "b": [3.0, 4.0]})
    changes = score_changes({"before": before, "after": after})
    assert set(changes) == {"change", "change · a", "change · b"}
    assert changes["change"]["rm"]["mean"] == pytest.approx(0.25)
    assert changes["change · a"]["rm"] == {"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5, "n": 2}
    assert changes["change · b"]["rm"]["mean"] == 0.0
    assert score_changes({"before": None, "after": after}) == {}
    old = {"scores": {"rm": {"mean": 1.0}}}  # an evaluation saved without per-problem scores
    assert score_changes({"before": old, "after": after}) == {}


def test_print_summary_shows_the_paired_change():
    def result(values):
        scores = {"rm": {"mean": sum(values) / 2, "ci_low": 0.0, "ci_high": 9.0, "values": values}}
        return {"accuracy": 0.5, "n": 2, "ci_low": 0.1, "ci_high": 0.9, "scores": scores}

    console = Console(record=True, width=200)
    summary = {"before": result([1.0, 2.0]), "after": result([1.5, 2.5])}
    print_summary(console, summary | {"score_changes": score_changes(summary)})
    assert "change: mean rm score +0.500 (paired 95% CI +0.500 to +0.500) over 2 problems" in (
        console.export_text()
    )


def test_print_summary_prints_nothing_without_evaluations():
    console = Console(record=True, width=120)
    print_summary(console, {"wall_s": 3.0})  # eval.before=false eval.after=false
    assert console.export_text() == ""


def test_print_summary_shows_tool_calls_per_episode_and_their_change_per_difficulty():
    def result(accuracy, calls, hard_calls):
        row = {"accuracy": accuracy, "n": 4, "ci_low": 0.0, "ci_high": 1.0}
        hard = row | {"tool_calls_per_episode": hard_calls, "sampled_tool_calls_per_episode": 0.5}
        return row | {"tool_calls_per_episode": calls, "tasks": {"hard": hard}}

    console = Console(record=True, width=200)
    print_summary(console, {"before": result(0.25, 0.5, 0.25), "after": result(0.75, 1.0, 1.5)})
    text = console.export_text()
    lines = text.splitlines()
    assert "tool calls/episode" in text
    cells = {line.split("│")[1].strip(): line for line in lines if line.startswith("│")}
    assert "+0.50" in cells["change"] and "+1.25 (+0.00)" in cells["change · hard"]
    assert "1.50 (0.50)" in cells["after · hard"] and "(" not in cells["after"].split("│")[-2]
    plain = Console(record=True, width=200)
    print_summary(plain, {"after": {"accuracy": 0.5, "n": 2, "ci_low": 0.1, "ci_high": 0.9}})
    assert "tool calls" not in plain.export_text()
