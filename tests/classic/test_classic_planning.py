"""Exact planning: a hand-solved MDP, VI = PI = linear solve on FrozenLake, Monte Carlo checks."""

import dataclasses

import numpy as np
import pytest

from reasonrl.classic.envs import env_spec, make_env
from reasonrl.classic.mdp import MDP
from reasonrl.classic.planning import (
    evaluate_policy,
    horizon_values,
    policy_iteration,
    q_values,
    sample_returns,
    value_iteration,
)
from reasonrl.classic.tabular import run_policy

# Two states, two actions, γ = 0.9.
#   state 0: a0 "stay" r=1 → 0;   a1 "go" r=0 → 1
#   state 1: a0 "stay" r=2 → 1;   a1 "quit" r=5, episode ends
# By hand: V*(1) = 2 / (1 − 0.9) = 20 (> 5), V*(0) = max(1 / 0.1, 0.9·20) = 18.
HAND_TABLE = {
    0: {0: [(1.0, 0, 1.0, False)], 1: [(1.0, 1, 0.0, False)]},
    1: {0: [(1.0, 1, 2.0, False)], 1: [(1.0, 1, 5.0, True)]},
}


def hand_mdp() -> MDP:
    return MDP.from_table(HAND_TABLE, initial=[1.0, 0.0], gamma=0.9)


def test_hand_mdp_solved_by_hand():
    mdp = hand_mdp()
    vi, pi = value_iteration(mdp), policy_iteration(mdp)
    np.testing.assert_allclose(vi.values, [18.0, 20.0], atol=1e-9)
    np.testing.assert_allclose(pi.values, [18.0, 20.0], atol=1e-12)
    # The terminating "quit" earns its reward and nothing after: Q(1, quit) = 5 exactly.
    np.testing.assert_allclose(q_values(mdp, pi.values), [[17.2, 18.0], [20.0, 5.0]], atol=1e-12)
    assert vi.policy.tolist() == pi.policy.tolist() == [1, 0]


def test_linear_solve_of_a_stochastic_policy_by_hand():
    # Uniform policy: V1 = 0.5 (2 + 0.9 V1) + 0.5·5  →  V1 = 3.5 / 0.55
    #                 V0 = 0.5 (1 + 0.9 V0) + 0.5 (0.9 V1)  →  V0 = (0.5 + 0.45 V1) / 0.55
    v1 = 3.5 / 0.55
    v0 = (0.5 + 0.45 * v1) / 0.55
    values = evaluate_policy(hand_mdp(), np.full((2, 2), 0.5))
    np.testing.assert_allclose(values, [v0, v1], atol=1e-12)


def test_mdp_rejects_bad_tables():
    with pytest.raises(ValueError, match="sum to 1"):
        MDP.from_table({0: {0: [(0.5, 0, 0.0, False)]}}, initial=[1.0], gamma=0.9)
    with pytest.raises(ValueError, match="gamma"):
        MDP.from_table({0: {0: [(1.0, 0, 0.0, False)]}}, initial=[1.0], gamma=1.5)


def test_frozenlake_table_is_read_faithfully():
    mdp = MDP.from_env(make_env("FrozenLake-v1"), gamma=0.99)
    p = mdp.continuation()
    # From the start, LEFT slips to UP, LEFT or DOWN with 1/3 each: UP and LEFT hit the wall.
    assert p[0, 0, 0] == pytest.approx(2 / 3) and p[0, 0, 4] == pytest.approx(1 / 3)
    # Holes (5, 7, 11, 12) and the goal (15) end the episode: no mass continues from them.
    for s in (5, 7, 11, 12, 15):
        assert p[s].sum() == 0.0
    # The only reward is 1 for stepping onto the goal, e.g. from 14 moving RIGHT (1/3 chance).
    assert mdp.expected_reward()[14, 2] == pytest.approx(1 / 3)
    assert mdp.expected_reward().sum() == pytest.approx(mdp.expected_reward()[[11, 14]].sum())


@pytest.mark.parametrize("env", ["FrozenLake-v1", "FrozenLake8x8-v1"])
def test_value_iteration_policy_iteration_and_linear_solve_agree(env):
    mdp = MDP.from_env(make_env(env), gamma=0.99)
    vi = value_iteration(mdp, tol=1e-10)
    pi = policy_iteration(mdp)
    assert vi.converged and pi.converged
    assert vi.error_bound < 1e-10
    assert np.abs(vi.values - pi.values).max() < 1e-8
    assert np.abs(evaluate_policy(mdp, vi.policy) - vi.values).max() < 1e-8
    assert np.abs(evaluate_policy(mdp, pi.policy) - pi.values).max() < 1e-12
    # Both values satisfy the Bellman optimality equation V = max_a Q.
    assert np.abs(q_values(mdp, vi.values).max(1) - vi.values).max() < 1e-10


@pytest.mark.parametrize("tol", [1e-1, 1e-3, 1e-6])
def test_contraction_bound_holds_when_stopping_early(tol):
    mdp = MDP.from_env(make_env("FrozenLake8x8-v1"), gamma=0.99)
    exact = policy_iteration(mdp).values
    vi = value_iteration(mdp, tol=tol)
    error = np.abs(vi.values - exact).max()
    assert vi.error_bound < tol
    assert error <= vi.error_bound
    assert error > 0.0  # stopped early indeed


@pytest.mark.parametrize("env", ["FrozenLake-v1", "FrozenLake8x8-v1"])
def test_monte_carlo_matches_v_star_and_success_probability(env):
    """20,000 episodes of the optimal policy, sampled over the table.

    V*(start) at γ = 0.99 is the expected *discounted* return E[γ^T · 1{goal}], so it is the
    sample mean of discounted returns that must match it; the success rate (undiscounted
    return) must match the policy's success probability, solved exactly with γ = 1. Without a
    time limit first, then with gymnasium's (100 steps for 4×4, 200 for 8×8).
    """
    mdp = MDP.from_env(make_env(env), gamma=0.99)
    start = int(np.argmax(mdp.initial))
    plan = policy_iteration(mdp)
    n = 20_000

    free = sample_returns(mdp, plan.policy, n, horizon=20_000, seed=0)
    assert free.length.max() < 20_000  # every episode ended on its own
    se = free.discounted.std() / np.sqrt(n)
    assert abs(free.discounted.mean() - plan.values[start]) < 4 * se
    success = evaluate_policy(dataclasses.replace(mdp, gamma=1.0), plan.policy)[start]
    se = np.sqrt(success * (1 - success) / n)
    assert abs(free.total.mean() - success) < 4 * se

    limit = make_env(env).spec.max_episode_steps
    timed = sample_returns(mdp, plan.policy, n, horizon=limit, seed=1)
    success_in_time = horizon_values(mdp, plan.policy, limit, gamma=1.0)[start]
    se = np.sqrt(success_in_time * (1 - success_in_time) / n)
    assert abs(timed.total.mean() - success_in_time) < 4 * se
    assert success_in_time < success  # the limit costs something


def test_monte_carlo_detects_the_time_limit_bias():
    # The check above has power: with the 100-step limit the discounted mean is measurably
    # below V*(start) on FrozenLake 4x4, and equals the time-limited value instead.
    mdp = MDP.from_env(make_env("FrozenLake-v1"), gamma=0.99)
    plan = policy_iteration(mdp)
    timed = sample_returns(mdp, plan.policy, 20_000, horizon=100, seed=2)
    se = timed.discounted.std() / np.sqrt(20_000)
    assert plan.values[0] - timed.discounted.mean() > 4 * se
    assert abs(timed.discounted.mean() - horizon_values(mdp, plan.policy, 100)[0]) < 4 * se


def test_vectorised_rollouts_match_the_gymnasium_env():
    """The numpy sampler against the oracle: the real env, one episode at a time."""
    env = make_env("FrozenLake-v1")
    mdp = MDP.from_env(env, gamma=0.99)
    policy = policy_iteration(mdp).policy
    n = 2_000
    episodes = [run_policy(env, policy, seed=123 if i == 0 else None) for i in range(n)]
    env_success = np.mean([e.total for e in episodes])
    env_length = np.mean([len(e.actions) for e in episodes])
    fast = sample_returns(mdp, policy, 20_000, horizon=100, seed=3)
    p = fast.total.mean()
    assert abs(env_success - p) < 4 * np.sqrt(p * (1 - p) * (1 / n + 1 / 20_000))
    length_se = fast.length.std() * np.sqrt(1 / n + 1 / 20_000)
    assert abs(env_length - fast.length.mean()) < 4 * length_se


def test_env_names_and_aliases():
    assert env_spec("Taxi-v3").gym_id in ("Taxi-v3", "Taxi-v4")
    assert env_spec("Taxi-v4").name == "Taxi-v3"
    assert env_spec("CliffWalking-v0").name == "CliffWalking-v1"
    assert make_env("FrozenLake8x8-v1").unwrapped.desc.shape == (8, 8)
    with pytest.raises(ValueError, match="valid choices: FrozenLake-v1"):
        env_spec("MountainCar-v0")


def test_taxi_optimal_policy_delivers_every_passenger():
    env = make_env("Taxi-v3")
    mdp = MDP.from_env(env, gamma=0.99)
    vi, pi = value_iteration(mdp), policy_iteration(mdp)
    assert np.abs(vi.values - pi.values).max() < 1e-8
    for i in range(20):
        episode = run_policy(env, vi.policy, seed=i)
        assert episode.rewards[-1] == 20 and len(episode.actions) <= 20  # drop-off, no detours


def test_undiscounted_value_iteration_has_no_contraction_bound():
    # γ = 1 needs episodes that end: one way to the goal, reward 5 on arrival.
    table = {0: {0: [(1.0, 1, 0.0, False)]}, 1: {0: [(1.0, 1, 5.0, True)]}}
    mdp = MDP.from_table(table, initial=[1.0, 0.0], gamma=1.0)
    vi = value_iteration(mdp, tol=1e-12)
    assert vi.converged and vi.error_bound == np.inf
    np.testing.assert_allclose(vi.values, [5.0, 5.0])
    with pytest.raises(ValueError, match="gamma < 1"):
        policy_iteration(mdp)


def test_run_policy_stops_a_policy_that_walks_in_circles():
    always_left = np.full(48, 3)  # from the start, LEFT bumps into the wall forever
    episode = run_policy(make_env("CliffWalking-v1"), always_left, seed=0, max_steps=50)
    assert len(episode.actions) == 50 and episode.total == -50
