"""A finite MDP (S, A, P, R, γ) as numpy arrays, built by hand or from a toy-text env's table.

Gymnasium's toy-text environments expose their dynamics as ``env.unwrapped.P[s][a]``, a list
of ``(probability, next_state, reward, terminated)`` outcomes. ``MDP`` keeps exactly that,
padded to ``K`` outcomes per (state, action), so it can both plan (dense Bellman backups) and
sample (vectorised rollouts) without losing which outcomes end the episode: a terminating
outcome contributes its reward but no future value. Time limits (``TimeLimit`` truncation)
are not part of the MDP; ``planning.horizon_values`` and ``planning.sample_returns`` take the
horizon explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

Outcome = tuple[float, int, float, bool]  # (probability, next_state, reward, terminated)


@dataclass(frozen=True)
class MDP:
    """Finite MDP; arrays are indexed ``[state, action, outcome]``."""

    prob: np.ndarray  # [S, A, K] float64, rows sum to 1 (padding outcomes have probability 0)
    next_state: np.ndarray  # [S, A, K] int64
    reward: np.ndarray  # [S, A, K] float64
    terminal: np.ndarray  # [S, A, K] bool: the outcome ends the episode
    initial: np.ndarray  # [S] float64, start-state distribution
    gamma: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not np.allclose(self.prob.sum(-1), 1.0):
            raise ValueError("each (state, action) outcome distribution must sum to 1")
        if not np.isclose(self.initial.sum(), 1.0):
            raise ValueError("the initial distribution must sum to 1")

    @property
    def n_states(self) -> int:
        return self.prob.shape[0]

    @property
    def n_actions(self) -> int:
        return self.prob.shape[1]

    @classmethod
    def from_table(
        cls,
        table: Mapping[int, Mapping[int, Sequence[Outcome]]],
        initial: np.ndarray | Sequence[float],
        gamma: float,
    ) -> MDP:
        """Build from a gymnasium-style table ``table[s][a] = [(p, s', r, terminated), ...]``."""
        n_states = len(table)
        n_actions = len(table[0])
        k = max(len(table[s][a]) for s in range(n_states) for a in range(n_actions))
        prob = np.zeros((n_states, n_actions, k))
        next_state = np.zeros((n_states, n_actions, k), dtype=np.int64)
        reward = np.zeros((n_states, n_actions, k))
        terminal = np.zeros((n_states, n_actions, k), dtype=bool)
        for s in range(n_states):
            for a in range(n_actions):
                for i, (p, s_next, r, done) in enumerate(table[s][a]):
                    prob[s, a, i] = p
                    next_state[s, a, i] = s_next
                    reward[s, a, i] = r
                    terminal[s, a, i] = done
                # Padding outcomes point back to s with probability 0: harmless in both uses.
                next_state[s, a, len(table[s][a]) :] = s
        initial = np.asarray(initial, dtype=np.float64)
        return cls(prob, next_state, reward, terminal, initial, float(gamma))

    @classmethod
    def from_env(cls, env: gym.Env, gamma: float) -> MDP:
        """Build from a toy-text env (FrozenLake, CliffWalking, Taxi) and its start distribution."""
        base = env.unwrapped
        return cls.from_table(base.P, base.initial_state_distrib, gamma)  # type: ignore[attr-defined]

    def expected_reward(self) -> np.ndarray:
        """``r[s, a] = E[R | s, a]``, shape [S, A]."""
        return (self.prob * self.reward).sum(-1)

    def continuation(self) -> np.ndarray:
        """``P[s, a, s']``: probability of reaching s' *without* the episode ending, [S, A, S].

        Sub-stochastic where episodes can end; the Bellman backup is ``r + γ P V``.
        """
        out = np.zeros((self.n_states, self.n_actions, self.n_states))
        s_idx, a_idx, _ = np.indices(self.prob.shape)
        live = self.prob * ~self.terminal
        np.add.at(out, (s_idx, a_idx, self.next_state), live)
        return out
