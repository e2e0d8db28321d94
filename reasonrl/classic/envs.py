"""The gymnasium environments the classic module knows, by the names the CLI accepts.

Two kinds: tabular toy-text environments (a finite state space and a transition table
``env.unwrapped.P``, so they can be solved exactly) and CartPole, whose state is continuous.
Gymnasium renames versions now and then (``Taxi-v3`` became ``Taxi-v4`` in gymnasium 1.3 with
the same default dynamics); both names are accepted and the installed id is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym


@dataclass(frozen=True)
class EnvSpec:
    """What the classic module needs to know about one environment."""

    name: str  # the name the user typed, canonicalised (e.g. "Taxi-v3")
    gym_ids: tuple[str, ...]  # candidate gymnasium ids, the first registered one is used
    kind: Literal["tabular", "continuous"]
    grid: tuple[int, int] | None = None  # (rows, cols) for grid worlds drawn as arrows
    kwargs: tuple[tuple[str, Any], ...] = ()  # extra gym.make kwargs

    @property
    def gym_id(self) -> str:
        for gym_id in self.gym_ids:
            if gym_id in gym.registry:
                return gym_id
        raise ValueError(f"none of {self.gym_ids} is registered in gymnasium {gym.__version__}")


_SPECS = (
    EnvSpec("FrozenLake-v1", ("FrozenLake-v1",), "tabular", (4, 4), (("is_slippery", True),)),
    EnvSpec("FrozenLake8x8-v1", ("FrozenLake8x8-v1",), "tabular", (8, 8), (("is_slippery", True),)),
    EnvSpec("CliffWalking-v1", ("CliffWalking-v1", "CliffWalking-v0"), "tabular", (4, 12)),
    EnvSpec("Taxi-v3", ("Taxi-v3", "Taxi-v4"), "tabular"),
    EnvSpec("CartPole-v1", ("CartPole-v1",), "continuous"),
)
_ALIASES = {
    "FrozenLake4x4-v1": "FrozenLake-v1",
    "CliffWalking-v0": "CliffWalking-v1",
    "Taxi-v4": "Taxi-v3",
}
ENVS: dict[str, EnvSpec] = {spec.name: spec for spec in _SPECS}


def env_spec(name: str) -> EnvSpec:
    """Look an environment up by name or alias; a clear error lists the valid names."""
    spec = ENVS.get(_ALIASES.get(name, name))
    if spec is None:
        valid = ", ".join([*ENVS, *_ALIASES])
        raise ValueError(f"unknown environment {name!r}; valid choices: {valid}")
    return spec


def make_env(name: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` for a known environment (with its time limit, as gymnasium registers it)."""
    spec = env_spec(name)
    return gym.make(spec.gym_id, **{**dict(spec.kwargs), **kwargs})
