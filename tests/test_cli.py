import json

from typer.testing import CliRunner

from reasonrl.cli import app
from reasonrl.logging import RunLogger

runner = CliRunner()


def test_every_command_has_useful_help():
    for command in ("run", "quickstart", "rm", "dpo", "eval", "report", "classic"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Usage" in result.output and len(result.output) > 200


def test_report_rebuilds_from_a_run_directory(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as log:
        for step in range(1, 4):
            log.log(step, {"reward/mean": step / 4, "kl/mean": 0.01 * step})
    (tmp_path / "summary.json").write_text(
        json.dumps(
            {"before": {"accuracy": 0.3, "n": 10}, "after": {"accuracy": 0.5, "n": 10}, "wall_s": 3}
        )
    )
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report.html").read_text()
    assert "+20.0 pts" in html


def test_report_on_a_directory_without_metrics_fails_clearly(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "no metrics.jsonl" in result.output


def test_classic_command_runs_and_rejects_unknown_algorithms(tmp_path):
    out = tmp_path / "vi"
    result = runner.invoke(
        app, ["classic", "value-iteration", "--env", "FrozenLake-v1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())
    bad = runner.invoke(app, ["classic", "dqn", "--env", "FrozenLake-v1", "--out", str(out)])
    assert bad.exit_code != 0 and "value-iteration" in bad.output
