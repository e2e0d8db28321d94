import json
import subprocess
import sys

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
    with RunLogger(tmp_path, report_to=()) as log:
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


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    import torch

    from reasonrl.models import load_tokenizer
    from reasonrl.models.reward import load_reward_model

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("rm") / "model")
    rm = load_reward_model("bundled", head="value", device="cpu")
    torch.nn.init.normal_(rm.model.head.weight)  # a new head scores everything 0
    rm.save_pretrained(path)
    load_tokenizer("bundled").save_pretrained(path)
    return path


def test_eval_scores_the_greedy_completions_with_a_reward_model(tmp_path, rm_dir):
    from reasonrl.rewards.reward_model import RewardModelVerifier
    from reasonrl.tasks import Sample

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


def test_eval_against_a_baseline_shows_both_and_the_paired_score_change(tmp_path, rm_dir):
    base = tmp_path / "base.json"
    common = ["--reward-model", f"judge={rm_dir}", "eval.limit=4", "eval.k=1"]  # < 5 examples
    first = runner.invoke(app, ["eval", *common, "--out", str(base)])
    assert first.exit_code == 0, first.output
    # the same model again: every per-problem difference is 0
    again = runner.invoke(app, ["eval", *common, "--baseline", str(base)])
    assert again.exit_code == 0, again.output
    text = " ".join(again.output.split())
    assert "before" in text and "+0.0 pts" in text
    assert "change: mean judge score +0.000 (paired 95% CI +0.000 to +0.000) over 4" in text
    # a baseline without per-problem scores (written before they were kept) says so
    saved = json.loads(base.read_text())
    del saved["scores"]["judge"]["values"]
    base.write_text(json.dumps(saved))
    older = runner.invoke(app, ["eval", *common, "--baseline", str(base)])
    assert "no paired change of judge" in " ".join(older.output.split())
    # a baseline of other problems is refused
    other = runner.invoke(app, ["eval", "--baseline", str(base), "eval.limit=3", "eval.k=1"])
    assert other.exit_code == 2
    assert "other problems" in other.output


def test_eval_names_a_missing_reward_model(tmp_path):
    missing = str(tmp_path / "no-such-rm")
    result = runner.invoke(app, ["eval", "--reward-model", missing, "eval.limit=2"])
    assert result.exit_code == 2
    assert "no-such-rm" in result.output


def test_eval_is_seeded_and_refuses_what_is_not_an_evaluation(tmp_path):
    # the same model, recipe and seed sample the same completions: --baseline compares models,
    # not draws of the random generator
    # (two processes, at once: torch seeds its generator at random in each)
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "reasonrl", "eval", "--out", str(out), "eval.limit=20"]
            + ["eval.k=4"]
        )
        for out in outs
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    a, b = (json.loads(o.read_text()) for o in outs)
    assert a["pass_at_k"] == b["pass_at_k"] and 0 < a["pass_at_k"]["1"] < 1
    (tmp_path / "list.json").write_text("[1, 2]")
    for bad in ("list.json", "missing.json"):
        result = runner.invoke(app, ["eval", "--baseline", str(tmp_path / bad), "eval.limit=2"])
        assert result.exit_code == 2
        assert bad in " ".join(result.output.split())
    result = runner.invoke(app, ["eval", "eval.limit=0"])
    assert result.exit_code == 2 and "eval.limit" in result.output


def test_report_compare_writes_one_report_of_the_runs(tmp_path):
    dirs = [tmp_path / name for name in ("run-alpha", "run-beta", "run-gamma")]
    for i, d in enumerate(dirs):
        with RunLogger(d, report_to=()) as log:
            log.log(1, {"reward/mean": i / 4})
    args = ["report", str(dirs[0]), "--compare", str(dirs[1]), "--compare", str(dirs[2])]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    page = (dirs[0] / "comparison" / "report.html").read_text()
    assert all(d.name in page for d in dirs)


def test_eval_with_a_stage_of_a_multi_stage_recipe(tmp_path):
    import yaml

    recipe = tmp_path / "pipe.yaml"
    task = {"name": "chain_sum", "train_size": 50, "eval_size": 10}
    stages = [
        {"name": "warm", "stage": "sft"},
        {"name": "tuned", "stage": "rl", "eval": {"k": 0, "limit": 4}},
    ]
    recipe.write_text(yaml.safe_dump({"name": "pipe", "task": task, "stages": stages}))
    out = tmp_path / "eval.json"
    args = ["eval", "--recipe", str(recipe), "--stage", "tuned", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["n"] == 4  # the stage's own eval settings
    for extra, message in (([], "--stage ['warm', 'tuned']"), (["--stage", "x"], "'x' is not")):
        result = runner.invoke(app, ["eval", "--recipe", str(recipe), *extra])
        assert result.exit_code == 2 and message in " ".join(result.output.split())


def test_run_takes_a_multi_stage_recipes_out_and_refuses_what_it_would_ignore(tmp_path):
    import yaml

    recipe, out = tmp_path / "pipe.yaml", tmp_path / "elsewhere"
    stages = [{"name": "a", "stage": "sft"}]
    recipe.write_text(yaml.safe_dump({"name": "pipe", "out": str(out), "stages": stages}))
    result = runner.invoke(app, ["run", str(recipe), "--resume"])
    assert result.exit_code == 2 and f"nothingtoresumein{out}" in "".join(result.output.split())
    result = runner.invoke(app, ["run", str(recipe), "name=other"])
    assert result.exit_code == 2 and "set 'name:' in the recipe" in " ".join(result.output.split())


@pytest.mark.parametrize("tracker", ["wandb", "trackio"])
def test_a_tracker_that_is_not_installed_stops_the_run_before_it_starts(
    tmp_path, monkeypatch, tracker
):
    monkeypatch.setitem(sys.modules, tracker, None)  # as if not installed: import fails
    out = tmp_path / "run"
    result = runner.invoke(app, ["quickstart", f"log.report_to=[{tracker}]", "--out", str(out)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"log.report_to lists {tracker}" in message
    assert f"pip install 'reasonrl[{tracker}]'" in message
    assert not out.exists()  # said before anything was written, let alone evaluated


def test_unreadable_inputs_are_one_line_errors_with_exit_code_2(tmp_path, tiny_qwen):
    task = tmp_path / "task.jsonl"
    task.write_bytes(b'{"prompt": "1+1", "answer": "2"}\n{"prompt": "caf\xe9", "answer": "3"}\n')
    jsonl = ["task.source=jsonl", f"task.train_path={task}", f"task.eval_path={task}"]
    model = tmp_path / "model"
    tiny_qwen.save_pretrained(model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    cases = [(jsonl, "task.jsonl:2: not UTF-8"), ([f"model.path={model}"], "truncated")]
    for overrides, message in cases:
        result = runner.invoke(app, ["run", "quickstart", *overrides, "--out", str(tmp_path / "r")])
        assert result.exit_code == 2, result.output
        output = " ".join(result.output.split())  # as one line, whatever the terminal's width
        assert message in output and "Traceback" not in output
