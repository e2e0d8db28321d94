"""Tabular Q-learning and SARSA with ε-greedy exploration, on gymnasium toy-text envs.

Both learn ``Q[s, a]`` from interaction with the real gymnasium env (time limit included):

- Q-learning (off-policy): ``Q(s,a) += α (r + γ max_a' Q(s',a') − Q(s,a))``
- SARSA (on-policy):       ``Q(s,a) += α (r + γ Q(s',a') − Q(s,a))``, a' the action taken next

The bootstrap term is dropped only when the episode *terminates*; a time-limit truncation still
bootstraps. ε decays linearly from ``epsilon_start`` to ``epsilon_end`` over
``epsilon_decay_episodes`` and then stays; the step size is constant or decays with the visit
count of (s, a) as ``α_0 / n(s,a)^ω``.

Run: ``reasonrl classic q-learning --env FrozenLake-v1`` (CPU, seconds).
Left out: Expected SARSA, double Q-learning, eligibility traces, function approximation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class TabularConfig:
    """Hyper-parameters of tabular Q-learning / SARSA; sizes are in episodes."""

    episodes: int = 10_000  # training episodes
    gamma: float = 0.99  # discount
    epsilon_start: float = 1.0  # ε of the ε-greedy behaviour policy in the first episode
    epsilon_end: float = 0.05  # ε once the decay is over
    epsilon_decay_episodes: int = 5_000  # episodes over which ε decays linearly
    step_size: float = 0.1  # α (constant) or α_0 (visit decay)
    step_size_schedule: Literal["constant", "visits"] = "constant"
    step_size_power: float = 0.8  # ω of α_0 / n(s,a)^ω; in (0.5, 1] meets Robbins–Monro
    q_init: float = 0.0  # initial value of every Q[s, a]
    seed: int = 0  # seeds the env's reset and the exploration RNG

    def epsilon(self, episode: int) -> float:
        frac = min(1.0, episode / max(1, self.epsilon_decay_episodes))
        return self.epsilon_start + frac * (self.epsilon_end - self.epsilon_start)


# Per-env defaults used by ``reasonrl classic`` and the tests (tuned on seeds 0–4).
TABULAR_DEFAULTS: dict[str, TabularConfig] = {
    "FrozenLake-v1": TabularConfig(
        episodes=20_000, gamma=0.99, epsilon_end=0.01, epsilon_decay_episodes=10_000,
        step_size=0.05,
    ),
    "FrozenLake8x8-v1": TabularConfig(
        episodes=60_000, gamma=0.99, epsilon_end=0.01, epsilon_decay_episodes=30_000,
        step_size=0.05,
    ),
    # Sutton & Barto Example 6.6: undiscounted, constant ε = 0.1. Their α = 0.5 leaves SARSA's
    # greedy path noisy (unsafe or looping on 5 of 10 seeds at 500 episodes); α = 0.1 does not.
    "CliffWalking-v1": TabularConfig(
        episodes=1_000, gamma=1.0, epsilon_start=0.1, epsilon_end=0.1, step_size=0.1,
    ),
    "Taxi-v3": TabularConfig(
        episodes=5_000, gamma=0.99, epsilon_end=0.05, epsilon_decay_episodes=2_500,
        step_size=0.5,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class TabularResult:
    """A learned Q-table and the training curve."""

    q: np.ndarray  # [S, A]
    returns: np.ndarray  # [episodes] undiscounted return of each training episode
    lengths: np.ndarray  # [episodes] steps of each training episode
    config: TabularConfig = field(repr=False)

    @property
    def policy(self) -> np.ndarray:
        """Greedy policy [S] (ties broken towards the lowest action)."""
        return self.q.argmax(1)


def _epsilon_greedy(q_row: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    if rng.random() < epsilon:
        return int(rng.integers(len(q_row)))
    # Random tie-breaking matters early on, when the whole row is still q_init.
    best = np.flatnonzero(q_row == q_row.max())
    return int(best[0] if len(best) == 1 else rng.choice(best))


def train_tabular(
    algo: Literal["q-learning", "sarsa"],
    env: gym.Env,
    config: TabularConfig,
    on_episode: Callable[[int, float], None] | None = None,
) -> TabularResult:
    """Train Q-learning or SARSA on a discrete-state, discrete-action gymnasium env."""
    if algo not in ("q-learning", "sarsa"):
        raise ValueError(f"unknown tabular algorithm {algo!r}; valid: q-learning, sarsa")
    n_states, n_actions = env.observation_space.n, env.action_space.n  # type: ignore[attr-defined]
    q = np.full((n_states, n_actions), config.q_init, dtype=np.float64)
    visits = np.zeros((n_states, n_actions), dtype=np.int64)
    rng = np.random.default_rng(config.seed)
    returns = np.zeros(config.episodes)
    lengths = np.zeros(config.episodes, dtype=np.int64)
    gamma = config.gamma

    for episode in range(config.episodes):
        epsilon = config.epsilon(episode)
        state, _ = env.reset(seed=config.seed if episode == 0 else None)
        action = _epsilon_greedy(q[state], epsilon, rng)
        done = False
        while not done:
            next_state, reward, terminated, truncated, _ = env.step(action)
            next_action = _epsilon_greedy(q[next_state], epsilon, rng)
            if terminated:
                target = reward
            elif algo == "q-learning":
                target = reward + gamma * q[next_state].max()
            else:
                target = reward + gamma * q[next_state, next_action]
            visits[state, action] += 1
            alpha = config.step_size
            if config.step_size_schedule == "visits":
                alpha = alpha / visits[state, action] ** config.step_size_power
            q[state, action] += alpha * (target - q[state, action])
            returns[episode] += reward
            lengths[episode] += 1
            state, action = next_state, next_action
            done = terminated or truncated
        if on_episode is not None:
            on_episode(episode, float(returns[episode]))
    return TabularResult(q, returns, lengths, config)


@dataclass(frozen=True)
class Episode:
    """One episode of a fixed policy in a gymnasium env."""

    states: list[int]  # visited states, the start state first, the final state last
    actions: list[int]
    rewards: list[float]

    @property
    def total(self) -> float:
        return float(sum(self.rewards))


def run_policy(
    env: gym.Env, policy: np.ndarray, seed: int | None = None, max_steps: int = 10_000
) -> Episode:
    """Play a deterministic tabular policy [S] for one episode.

    Stops at the env's time limit or after ``max_steps``: a greedy policy can walk in circles
    forever on an env without a time limit (CliffWalking).
    """
    state, _ = env.reset(seed=seed)
    episode = Episode([int(state)], [], [])
    done = False
    while not done and len(episode.actions) < max_steps:
        action = int(policy[state])
        state, reward, terminated, truncated, _ = env.step(action)
        episode.states.append(int(state))
        episode.actions.append(action)
        episode.rewards.append(float(reward))
        done = terminated or truncated
    return episode
