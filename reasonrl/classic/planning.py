"""Exact planning on a finite ``MDP``: value iteration, policy iteration, policy evaluation.

- ``value_iteration`` backs up ``V ← max_a r + γ P V`` until the contraction bound
  ``γ‖V_{k+1} − V_k‖∞ / (1 − γ)`` on ``‖V_{k+1} − V*‖∞`` is below ``tol``, and reports it.
- ``evaluate_policy`` solves the linear system ``(I − γ P_π) V = r_π`` exactly.
- ``policy_iteration`` alternates that solve with greedy improvement until the policy is stable.
- ``horizon_values`` and ``sample_returns`` measure a policy under a time limit (gymnasium's
  ``TimeLimit``), exactly by backward induction or by vectorised Monte Carlo over the table.

Left out: asynchronous / prioritised sweeping, modified policy iteration, LP solutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reasonrl.classic.mdp import MDP


@dataclass(frozen=True)
class PlanResult:
    """Output of a planner."""

    values: np.ndarray  # [S] state values of the returned solution
    q: np.ndarray  # [S, A] one-step lookahead on ``values``
    policy: np.ndarray  # [S] int64, greedy in ``q``
    iterations: int  # sweeps (VI) or evaluate/improve rounds (PI)
    error_bound: float  # proven upper bound on ‖values − V*‖∞
    converged: bool


def q_values(mdp: MDP, values: np.ndarray) -> np.ndarray:
    """One-step lookahead ``Q[s, a] = r[s, a] + γ Σ_s' P[s, a, s'] V[s']``; [S] → [S, A]."""
    return mdp.expected_reward() + mdp.gamma * mdp.continuation() @ values


def _policy_matrix(mdp: MDP, policy: np.ndarray) -> np.ndarray:
    """A deterministic policy [S] (int) or stochastic policy [S, A] as probabilities [S, A]."""
    if policy.ndim == 1:
        return np.eye(mdp.n_actions)[policy]
    return policy


def _policy_model(mdp: MDP, policy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(r_π [S], P_π [S, S])`` for a deterministic or stochastic policy."""
    pi = _policy_matrix(mdp, policy)
    r_pi = (pi * mdp.expected_reward()).sum(1)
    p_pi = np.einsum("sa,sat->st", pi, mdp.continuation())
    return r_pi, p_pi


def value_iteration(mdp: MDP, tol: float = 1e-10, max_iterations: int = 100_000) -> PlanResult:
    """Bellman optimality backups until the contraction bound on ‖V − V*‖∞ is below ``tol``.

    With γ = 1 there is no contraction bound; iteration stops when a sweep changes V by < tol
    and ``error_bound`` is reported as ``inf``.
    """
    r, p = mdp.expected_reward(), mdp.continuation()
    gamma = mdp.gamma
    values = np.zeros(mdp.n_states)
    iterations, converged, bound = 0, False, np.inf
    while not converged and iterations < max_iterations:
        new_values = (r + gamma * p @ values).max(1)
        delta = float(np.abs(new_values - values).max())
        values, iterations = new_values, iterations + 1
        bound = gamma * delta / (1.0 - gamma) if gamma < 1.0 else np.inf
        converged = (bound if gamma < 1.0 else delta) < tol
    q = r + gamma * p @ values
    return PlanResult(values, q, q.argmax(1), iterations, float(bound), converged)


def evaluate_policy(mdp: MDP, policy: np.ndarray) -> np.ndarray:
    """Exact ``V^π`` [S] by solving ``(I − γ P_π) V = r_π``; policy is [S] int or [S, A] probs.

    With γ = 1 the system is singular unless the policy ends every episode with probability 1.
    """
    r_pi, p_pi = _policy_model(mdp, policy)
    return np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * p_pi, r_pi)


def policy_iteration(mdp: MDP, max_iterations: int = 1_000) -> PlanResult:
    """Howard's policy iteration with exact (linear-solve) evaluation; needs γ < 1."""
    if mdp.gamma >= 1.0:
        raise ValueError("policy_iteration needs gamma < 1 (the first policy may never end)")
    policy = np.zeros(mdp.n_states, dtype=np.int64)
    states = np.arange(mdp.n_states)
    iterations, stable = 0, False
    while not stable and iterations < max_iterations:
        values = evaluate_policy(mdp, policy)
        q = q_values(mdp, values)
        # Keep the current action unless another is strictly better: ties would cycle forever.
        keep = q[states, policy] >= q.max(1) - 1e-12 * np.maximum(1.0, np.abs(q).max(1))
        new_policy = np.where(keep, policy, q.argmax(1))
        stable, policy, iterations = np.array_equal(new_policy, policy), new_policy, iterations + 1
    if not stable:  # out of iterations: report the values of the policy returned
        values = evaluate_policy(mdp, policy)
        q = q_values(mdp, values)
    residual = float(np.abs(q.max(1) - values).max())  # ‖T V − V‖∞
    return PlanResult(values, q, policy, iterations, residual / (1.0 - mdp.gamma), stable)


def horizon_values(
    mdp: MDP, policy: np.ndarray, horizon: int, gamma: float | None = None
) -> np.ndarray:
    """Expected return [S] of ``policy`` over at most ``horizon`` steps, by backward induction.

    ``gamma`` defaults to the MDP's; pass 1.0 for the undiscounted return, which for a 0/1
    goal reward (FrozenLake) is the probability of success within the time limit.
    """
    r_pi, p_pi = _policy_model(mdp, policy)
    g = mdp.gamma if gamma is None else gamma
    values = np.zeros(mdp.n_states)
    for _ in range(horizon):
        values = r_pi + g * p_pi @ values
    return values


@dataclass(frozen=True)
class Returns:
    """Per-episode outcomes of sampled rollouts."""

    discounted: np.ndarray  # [N] Σ_t γ^t r_t
    total: np.ndarray  # [N] Σ_t r_t
    length: np.ndarray  # [N] steps taken (≤ horizon)


def sample_returns(
    mdp: MDP, policy: np.ndarray, episodes: int, horizon: int, seed: int = 0
) -> Returns:
    """Run ``episodes`` rollouts of a deterministic ``policy`` [S] at once, over the table.

    Same dynamics as stepping the gymnasium env with ``TimeLimit(horizon)``, vectorised over
    episodes: each step samples one outcome per live episode by inverting the outcome CDF.
    """
    rng = np.random.default_rng(seed)
    state = rng.choice(mdp.n_states, size=episodes, p=mdp.initial)
    cdf = mdp.prob.cumsum(-1)
    alive = np.ones(episodes, dtype=bool)
    discounted, total = np.zeros(episodes), np.zeros(episodes)
    length = np.zeros(episodes, dtype=np.int64)
    for t in range(horizon):
        action = policy[state]
        u = rng.random(episodes)[:, None]
        k = np.minimum((u >= cdf[state, action]).sum(-1), mdp.prob.shape[-1] - 1)
        reward = np.where(alive, mdp.reward[state, action, k], 0.0)
        discounted += mdp.gamma**t * reward
        total += reward
        length += alive
        alive &= ~mdp.terminal[state, action, k]
        state = mdp.next_state[state, action, k]
        if not alive.any():
            break
    return Returns(discounted, total, length)
