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
