import json

import pytest
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


def test_eval_scores_the_greedy_completions_with_a_reward_model(tmp_path):
    import torch

    from reasonrl.models import load_tokenizer
    from reasonrl.models.reward import load_reward_model
    from reasonrl.rewards.reward_model import RewardModelVerifier
    from reasonrl.tasks import Sample

    torch.manual_seed(0)
    rm_dir = str(tmp_path / "rm")
    rm = load_reward_model("bundled", head="value", device="cpu")
    torch.nn.init.normal_(rm.model.head.weight)  # a new head scores everything 0
    rm.save_pretrained(rm_dir)
    load_tokenizer("bundled").save_pretrained(rm_dir)
    out = tmp_path / "eval.json"
    args = ["eval", "--reward-model", rm_dir, "--out", str(out), "eval.limit=5", "eval.k=1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"mean {rm_dir} score of the greedy completions" in " ".join(result.output.split())
    saved = json.loads(out.read_text())
    # the 5 greedy completions, scored again by the verifier the training rewards use
    completions = [e["completion"] for e in saved["examples"]]
    samples = [Sample(e["prompt"], "") for e in saved["examples"]]
    expected = RewardModelVerifier(rm_dir, normalize="none").raw_scores(completions, samples)
    assert saved["scores"][rm_dir]["values"] == pytest.approx(expected, abs=1e-5)
    assert len(set(expected)) > 1


def test_eval_names_a_missing_reward_model(tmp_path):
    missing = str(tmp_path / "no-such-rm")
    result = runner.invoke(app, ["eval", "--reward-model", missing, "eval.limit=2"])
    assert result.exit_code == 2
    assert "no-such-rm" in result.output
