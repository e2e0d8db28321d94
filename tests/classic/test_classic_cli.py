"""``run_classic``: every algorithm end to end on a small budget, files written, clear errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from reasonrl.classic.cli import ALGOS, run_classic


def read(out):
    results = json.loads((out / "results.json").read_text())
    assert (out / "returns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return results


def test_value_iteration_on_frozenlake(tmp_path, capsys):
    results = run_classic("value-iteration", "FrozenLake-v1", 2_000, seed=0, out=tmp_path)
    assert read(tmp_path) == json.loads(json.dumps(results))
    metrics = results["metrics"]
    assert metrics["plan/converged"] and metrics["plan/error_bound"] < 1e-8
    assert metrics["optimal/value_start"] == pytest.approx(0.5420, abs=1e-4)
    # 2,000 played episodes agree with the exact success rate within the time limit.
    p = metrics["optimal/expected_return"]
    assert abs(metrics["return/mean"] - p) < 4 * np.sqrt(p * (1 - p) / 2_000)
    assert len(results["returns"]) == 2_000
    grid = results["policy_grid"]
    assert [row[3] for row in grid] == ["↑", "H", "H", "G"]  # holes, goal as letters
    assert grid[0][0] == "←"  # the known optimum hugs the wall from the start
    assert "\n  " + grid[1] in capsys.readouterr().out


def test_policy_iteration_on_taxi_has_no_grid(tmp_path):
    results = run_classic("policy-iteration", "Taxi-v4", 50, seed=1, out=tmp_path)
    assert results["env"] == "Taxi-v3" and "policy_grid" not in results
    assert results["metrics"]["return/mean"] > 0


def test_q_learning_on_cliffwalking(tmp_path):
    results = run_classic("q-learning", "CliffWalking-v1", None, seed=0, out=tmp_path)
    assert results["config"]["episodes"] == 1_000 and results["config"]["seed"] == 0
    assert results["metrics"]["policy/expected_return"] == -13.0
    assert results["policy_grid"][2] == "→" * 11 + "↓"  # along the cliff edge
    assert results["policy_grid"][3] == "↑" + "C" * 10 + "G"


def test_sarsa_budget_override_rescales_exploration(tmp_path):
    results = run_classic("sarsa", "FrozenLake-v1", 200, seed=0, out=tmp_path)
    config = results["config"]
    assert config["episodes"] == 200 and config["epsilon_decay_episodes"] == 100
    assert len(results["returns"]) == 200
    assert 0.0 <= results["metrics"]["policy/expected_return"] <= 0.741


@pytest.mark.parametrize("algo", ["reinforce", "actor-critic"])
def test_policy_gradient_smoke(tmp_path, algo):
    results = run_classic(algo, "CartPole-v1", 40, seed=0, out=tmp_path)
    assert len(results["returns"]) >= 40
    assert results["metrics"]["train/solved_episode"] is None
    assert results["metrics"]["eval/return_mean"] > 0
    assert read(tmp_path)["config"]["max_episodes"] == 40


def test_unknown_names_list_the_valid_choices(tmp_path):
    with pytest.raises(ValueError, match="valid choices: value-iteration, policy-iteration"):
        run_classic("dqn", "CartPole-v1", 1, 0, tmp_path)
    with pytest.raises(ValueError, match="valid choices: .*CartPole-v1"):
        run_classic("sarsa", "Pong-v5", 1, 0, tmp_path)
    with pytest.raises(ValueError, match="use one of: reinforce, actor-critic"):
        run_classic("q-learning", "CartPole-v1", 1, 0, tmp_path)
    with pytest.raises(ValueError, match="use one of: value-iteration"):
        run_classic("reinforce", "FrozenLake-v1", 1, 0, tmp_path)
    assert set(ALGOS) == {
        "value-iteration", "policy-iteration", "q-learning", "sarsa", "reinforce", "actor-critic",
    }  # fmt: skip


def test_classic_does_not_import_the_llm_stack():
    code = (
        "import sys, reasonrl.classic.cli; "
        "bad = [m for m in ('transformers', 'peft', 'ray', 'reasonrl.models', 'reasonrl.train') "
        "if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
