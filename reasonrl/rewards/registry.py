"""Verifiers by name: the built-ins, or a user's by import path (``my_pkg.module:fn``)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from reasonrl.config import ConfigError, resolve_callable
from reasonrl.rewards.base import Verifier
from reasonrl.rewards.code import CodeVerifier
from reasonrl.rewards.correct import CorrectVerifier
from reasonrl.rewards.fmt import (
    length_penalty,
    overlong,
    repetition,
    tag_count,
    think_answer_format,
)
from reasonrl.rewards.gym import ReasoningGymVerifier
from reasonrl.rewards.math import MathVerifier
from reasonrl.rewards.numeric import exact_answer, numeric
from reasonrl.rewards.reward_model import RewardModelVerifier
from reasonrl.rewards.tools import tool_calls

# Functions take their options as keyword arguments; classes take them in their constructor.
BUILTIN_VERIFIERS: dict[str, Callable[..., Any]] = {
    "answer": exact_answer,
    "numeric": numeric,
    "math": MathVerifier,
    "reasoning_gym": ReasoningGymVerifier,
    "format": think_answer_format,
    "tag_count": tag_count,
    "overlong": overlong,
    "length": length_penalty,
    "repetition": repetition,
    "code": CodeVerifier,
    "correct": CorrectVerifier,
    "reward_model": RewardModelVerifier,
    "tool_calls": tool_calls,
}


def _resolve(name: str) -> Callable[..., Any]:
    return resolve_callable(name, BUILTIN_VERIFIERS, "verifier", "my_pkg.rewards:brevity")


def check_verifier(name: str, **cfg: Any) -> Callable[..., Any]:
    """The function or class that ``get_verifier(name, **cfg)`` would use, checked to accept
    ``cfg``, without calling it (so no model loads and no sandbox starts): how a run checks
    its rewards before anything slow. Unknown names and options raise :class:`ConfigError`."""
    target = _resolve(name)
    signature = inspect.signature(target)
    try:
        if isinstance(target, type):
            signature.bind(**cfg)
        else:
            signature.bind("", None, **cfg)
    except TypeError as e:
        extras = ("completion", "sample", "n_tokens", "episode")
        options = [p for p in signature.parameters if p not in extras]
        raise ConfigError(f"verifier {name!r}: {e} (options: {options})") from e
    return target


def get_verifier(name: str, **cfg: Any) -> Verifier:
    """The verifier called ``name`` (built-in, or ``module:attr``) configured with ``cfg``.

    A function ``fn(completion, sample, *, option=…)`` gets ``cfg`` bound as keyword arguments;
    a class is instantiated with ``cfg`` and its instances are the verifiers. Unknown names and
    options raise :class:`ConfigError` naming the valid ones.
    """
    target = check_verifier(name, **cfg)
    if isinstance(target, type):
        return target(**cfg)
    return functools.partial(target, **cfg) if cfg else target
