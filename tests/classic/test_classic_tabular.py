"""Q-learning and SARSA against exact optima: FrozenLake 4x4, CliffWalking (S&B 6.6), Taxi."""

import dataclasses

import numpy as np
import pytest

from reasonrl.classic.cli import TABULAR_DEFAULTS
from reasonrl.classic.envs import make_env
from reasonrl.classic.mdp import MDP
from reasonrl.classic.planning import horizon_values, value_iteration
from reasonrl.classic.tabular import TabularConfig, run_policy, train_tabular

CLIFF_ROW, COLS = 3, 12


def success_within_limit(mdp: MDP, policy: np.ndarray, limit: int = 100) -> float:
    return float(mdp.initial @ horizon_values(mdp, policy, limit, gamma=1.0))


def test_epsilon_decays_linearly_then_holds():
    config = TabularConfig(epsilon_start=1.0, epsilon_end=0.1, epsilon_decay_episodes=10)
    assert config.epsilon(0) == 1.0
    assert config.epsilon(5) == pytest.approx(0.55)
    assert config.epsilon(10) == config.epsilon(1_000) == pytest.approx(0.1)


def test_unknown_tabular_algorithm():
    with pytest.raises(ValueError, match="q-learning, sarsa"):
        train_tabular("td-lambda", make_env("FrozenLake-v1"), TabularConfig(episodes=1))  # type: ignore[arg-type]


def test_q_learning_is_near_optimal_on_frozenlake():
    env = make_env("FrozenLake-v1")
    mdp = MDP.from_env(env, gamma=0.99)
    optimal = success_within_limit(mdp, value_iteration(mdp).policy)
    config = dataclasses.replace(TABULAR_DEFAULTS["FrozenLake-v1"], seed=0)
    result = train_tabular("q-learning", env, config)
    learned = success_within_limit(mdp, result.policy)
    assert optimal == pytest.approx(0.740, abs=0.001)  # gymnasium's documented optimum is 0.74
    assert learned >= optimal - 0.03
    # The Q-values approach Q* too (V* is 0.54–0.86 there) on the states the policy visits most;
    # a constant α = 0.05 leaves them 0.03–0.07 off on seeds 0–4.
    q_star = value_iteration(mdp).q
    assert np.abs(result.q.max(1) - q_star.max(1))[[0, 4, 8, 9, 10, 13, 14]].max() < 0.1


def test_visit_count_step_size_learns_the_cliff():
    # α = 1/n(s,a)^0.6: decays (Robbins–Monro) but slowly enough to forget early targets;
    # with ω = 1 (plain averaging) 300 episodes are not enough to unlearn the first falls.
    config = TabularConfig(
        episodes=300, gamma=1.0, epsilon_start=0.1, epsilon_end=0.1, step_size=1.0,
        step_size_schedule="visits", step_size_power=0.6, seed=0,
    )  # fmt: skip
    result = train_tabular("q-learning", make_env("CliffWalking-v1"), config)
    assert run_policy(make_env("CliffWalking-v1"), result.policy, seed=0).total == -13


def cliff_run(algo: str, seed: int = 0):
    config = dataclasses.replace(TABULAR_DEFAULTS["CliffWalking-v1"], seed=seed)
    result = train_tabular(algo, make_env("CliffWalking-v1"), config)
    greedy = run_policy(make_env("CliffWalking-v1", max_episode_steps=200), result.policy, seed=0)
    interior_rows = [s // COLS for s in greedy.states if 0 < s % COLS < COLS - 1]
    return result, greedy, interior_rows


def test_q_learning_finds_the_optimal_cliff_edge_path():
    _, greedy, rows = cliff_run("q-learning")
    assert greedy.total == -13  # 13 steps, the shortest path
    assert set(rows) == {CLIFF_ROW - 1}  # right along the cliff edge


def test_sarsa_takes_the_safer_path():
    """Sutton & Barto Example 6.6: with ε = 0.1 SARSA's greedy path keeps away from the
    cliff (so it is longer than 13 steps), and SARSA earns more *online*, while exploring,
    than Q-learning, whose path on the edge makes ε-exploration fall off the cliff."""
    sarsa, greedy, rows = cliff_run("sarsa")
    assert greedy.rewards[-1] == -1 and greedy.states[-1] == CLIFF_ROW * COLS + COLS - 1  # goal
    assert -25 <= greedy.total < -13
    assert min(CLIFF_ROW - r for r in rows) >= 2  # never on the row next to the cliff
    q_learning, _, _ = cliff_run("q-learning")
    online = slice(100, None)  # after the first 100 episodes
    assert sarsa.returns[online].mean() > q_learning.returns[online].mean() + 10


def test_q_learning_on_taxi_is_near_optimal():
    env = make_env("Taxi-v3")
    mdp = MDP.from_env(env, gamma=0.99)
    config = dataclasses.replace(TABULAR_DEFAULTS["Taxi-v3"], seed=0)
    result = train_tabular("q-learning", env, config)
    optimal = success_within_limit(mdp, value_iteration(mdp).policy, limit=200)
    learned = success_within_limit(mdp, result.policy, limit=200)
    assert optimal > 7.5  # mean undiscounted return from a random start (20 − steps taken)
    assert learned >= optimal - 0.2
