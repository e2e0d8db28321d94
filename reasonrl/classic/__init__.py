"""Classic RL foundations, small and exact: MDPs, Bellman backups, Q-learning, policy gradients.

The pieces, each in its own file:

- ``envs``: the gymnasium envs by name (FrozenLake-v1 4×4 and FrozenLake8x8-v1 slippery,
  CliffWalking-v1, Taxi-v3, CartPole-v1), accepting the version names gymnasium moved between.
- ``mdp``: ``MDP`` (S, A, P, R, γ) as arrays, from a toy-text env's transition table or by hand.
- ``planning``: value iteration (with its contraction error bound), policy iteration, exact
  policy evaluation by a linear solve, time-limited evaluation, vectorised Monte Carlo rollouts.
- ``tabular``: Q-learning and SARSA with decaying ε-greedy exploration and step-size schedules.
- ``pg``: REINFORCE with a learned baseline and one-step actor-critic (torch), and a measure of
  the gradient variance the baseline removes.
- ``cli``: ``run_classic``, behind ``reasonrl classic ALGO --env ENV [--episodes N] [--seed S]``.

Run on CPU (no GPU path: the problems are tiny)::

    reasonrl classic value-iteration --env FrozenLake-v1
    reasonrl classic q-learning --env CliffWalking-v1
    OMP_NUM_THREADS=1 reasonrl classic reinforce --env CartPole-v1

or from Python::

    from reasonrl.classic import MDP, make_env, value_iteration
    plan = value_iteration(MDP.from_env(make_env("FrozenLake-v1"), gamma=0.99))

Left out on purpose: function approximation for the tabular methods (DQN), continuous action
spaces, eligibility traces, model-based RL beyond exact planning, and anything from the LLM
stack (this package imports none of it).
"""

from reasonrl.classic.envs import ENVS, env_spec, make_env
from reasonrl.classic.mdp import MDP
from reasonrl.classic.pg import PGConfig, actor_critic, evaluate, gradient_variance, reinforce
from reasonrl.classic.planning import (
    evaluate_policy,
    horizon_values,
    policy_iteration,
    sample_returns,
    value_iteration,
)
from reasonrl.classic.tabular import TabularConfig, run_policy, train_tabular

__all__ = [
    "ENVS",
    "MDP",
    "PGConfig",
    "TabularConfig",
    "actor_critic",
    "env_spec",
    "evaluate",
    "evaluate_policy",
    "gradient_variance",
    "horizon_values",
    "make_env",
    "policy_iteration",
    "reinforce",
    "run_policy",
    "sample_returns",
    "train_tabular",
    "value_iteration",
]
