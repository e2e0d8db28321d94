"""``reasonrl classic ALGO --env ENV [--episodes N] [--seed S] [--out DIR]``: run one classic
RL algorithm on one gymnasium env, on CPU, in seconds to a minute.

What a run does, top to bottom: pick the algorithm's default hyper-parameters for the env
(``--episodes`` overrides the budget) → train or plan with a rich progress bar over episodes →
measure the result against the exact optimum where one exists → write ``OUT/results.json``
(config, metrics, per-episode returns, the policy) and ``OUT/returns.png`` → print a summary
and, for grid worlds, the greedy policy as arrows.

- ``value-iteration`` / ``policy-iteration``: plan on the env's transition table, then play
  the optimal policy for ``--episodes`` episodes in the real env (default 1,000).
- ``q-learning`` / ``sarsa``: tabular, on FrozenLake-v1, FrozenLake8x8-v1, CliffWalking-v1,
  Taxi-v3; the greedy policy is scored exactly on the table against the optimal policy.
- ``reinforce`` / ``actor-critic``: torch MLPs on CartPole-v1, stopping once the last 100
  training episodes average ≥ 475, then 100 fresh evaluation episodes.

Examples (``OMP_NUM_THREADS=1`` stops the tiny torch nets from fighting over cores)::

    reasonrl classic value-iteration --env FrozenLake8x8-v1
    reasonrl classic sarsa --env CliffWalking-v1 --out runs/sarsa-cliff
    OMP_NUM_THREADS=1 reasonrl classic actor-critic --env CartPole-v1 --seed 1

Left out: hyper-parameter flags beyond the budget and seed (edit the ``*_DEFAULTS`` tables or
call the library functions), rendering, video, GPU.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from reasonrl.classic import pg
from reasonrl.classic.envs import EnvSpec, env_spec, make_env
from reasonrl.classic.mdp import MDP
from reasonrl.classic.planning import horizon_values, policy_iteration, value_iteration
from reasonrl.classic.tabular import TABULAR_DEFAULTS, run_policy, train_tabular

PLANNERS = ("value-iteration", "policy-iteration")
TABULAR = ("q-learning", "sarsa")
POLICY_GRADIENT = ("reinforce", "actor-critic")
ALGOS = (*PLANNERS, *TABULAR, *POLICY_GRADIENT)

PLAN_GAMMA = 0.99  # discount of the planners' MDP
PLAN_EVAL_EPISODES = 1_000  # default episodes played with the planned policy
UNLIMITED_HORIZON = 1_000  # horizon used to score envs without a time limit (CliffWalking)

ARROWS = {"FrozenLake-v1": "←↓→↑", "FrozenLake8x8-v1": "←↓→↑", "CliffWalking-v1": "↑→↓←"}


def run_classic(algo: str, env: str, episodes: int | None, seed: int, out: Path) -> dict:
    """Run ``algo`` on ``env``, write ``out/results.json`` and ``out/returns.png``, return the
    results; a ``ValueError`` names the valid choices for an unknown or unfitting algo/env."""
    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; valid choices: {', '.join(ALGOS)}")
    spec = env_spec(env)
    needs = "continuous" if algo in POLICY_GRADIENT else "tabular"
    if spec.kind != needs:
        fitting = POLICY_GRADIENT if spec.kind == "continuous" else (*PLANNERS, *TABULAR)
        raise ValueError(
            f"{algo} needs a {needs}-state environment but {spec.name} is {spec.kind}; "
            f"for {spec.name} use one of: {', '.join(fitting)}"
        )
    if episodes is not None and episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    start = time.perf_counter()

    if algo in PLANNERS:
        results = _run_planner(algo, spec, episodes or PLAN_EVAL_EPISODES, seed)
    elif algo in TABULAR:
        results = _run_tabular(algo, spec, episodes, seed)
    else:
        results = _run_policy_gradient(algo, spec, episodes, seed)
    results["metrics"]["perf/seconds"] = time.perf_counter() - start
    results = {"algo": algo, "env": spec.name, "gym_id": spec.gym_id, "seed": seed, **results}

    returns = np.asarray(results["returns"])
    results["metrics"]["return/mean"] = float(returns.mean())
    results["metrics"]["return/last_100"] = float(returns[-100:].mean())
    results["files"] = {"results": "results.json", "plot": "returns.png"}
    _plot_returns(returns, f"{algo} on {spec.name} (seed {seed})", out / "returns.png")
    if "policy" in results and spec.name in ARROWS:
        results["policy_grid"] = policy_grid(spec, np.asarray(results["policy"]))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))

    console.print(f"[bold]{algo}[/bold] on [bold]{spec.name}[/bold] ({spec.gym_id}), seed {seed}")
    for key, value in results["metrics"].items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        console.print(f"  {key:<28} {shown}")
    if "policy_grid" in results:
        console.print("greedy policy:")
        for row in results["policy_grid"]:
            console.print("  " + row, highlight=False)
    console.print(f"wrote {out / 'results.json'} and {out / 'returns.png'}")
    return results


def _progress(total: int, description: str) -> tuple[Progress, Callable[[int, float], None]]:
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("return {task.fields[ret]:>8.2f}"), TimeElapsedColumn(),
    )  # fmt: skip
    task = progress.add_task(description, total=total, ret=0.0)

    def on_episode(episode: int, episode_return: float) -> None:
        progress.update(task, completed=episode + 1, ret=episode_return)

    return progress, on_episode


def _score_policy(spec: EnvSpec, mdp: MDP, policy: np.ndarray) -> float:
    """Exact expected undiscounted return from the start distribution within the time limit."""
    horizon = make_env(spec.name).spec.max_episode_steps or UNLIMITED_HORIZON  # type: ignore[union-attr]
    return float(mdp.initial @ horizon_values(mdp, policy, horizon, gamma=1.0))


def _run_planner(algo: str, spec: EnvSpec, episodes: int, seed: int) -> dict[str, Any]:
    env = make_env(spec.name)
    mdp = MDP.from_env(env, PLAN_GAMMA)
    plan = value_iteration(mdp) if algo == "value-iteration" else policy_iteration(mdp)
    progress, on_episode = _progress(episodes, f"{algo}: playing the optimal policy")
    returns = []
    with progress:
        for i in range(episodes):
            returns.append(run_policy(env, plan.policy, seed=seed if i == 0 else None).total)
            on_episode(i, returns[-1])
    return {
        "config": {"gamma": PLAN_GAMMA, "episodes": episodes},
        "metrics": {
            "plan/iterations": plan.iterations,
            "plan/error_bound": plan.error_bound,
            "plan/converged": plan.converged,
            "optimal/value_start": float(mdp.initial @ plan.values),
            "optimal/expected_return": _score_policy(spec, mdp, plan.policy),
        },
        "returns": returns,
        "policy": plan.policy.tolist(),
    }


def _run_tabular(algo: str, spec: EnvSpec, episodes: int | None, seed: int) -> dict[str, Any]:
    config = dataclasses.replace(TABULAR_DEFAULTS[spec.name], seed=seed)
    if episodes is not None:
        decay = round(config.epsilon_decay_episodes * episodes / config.episodes)
        config = dataclasses.replace(config, episodes=episodes, epsilon_decay_episodes=decay)
    env = make_env(spec.name)
    progress, on_episode = _progress(config.episodes, f"{algo} on {spec.name}")
    with progress:
        result = train_tabular(algo, env, config, on_episode)  # type: ignore[arg-type]
    mdp = MDP.from_env(env, config.gamma if config.gamma < 1.0 else PLAN_GAMMA)
    optimal = value_iteration(mdp).policy
    return {
        "config": dataclasses.asdict(config),
        "metrics": {
            "policy/expected_return": _score_policy(spec, mdp, result.policy),
            "optimal/expected_return": _score_policy(spec, mdp, optimal),
        },
        "returns": result.returns.tolist(),
        "policy": result.policy.tolist(),
    }


def _run_policy_gradient(
    algo: str, spec: EnvSpec, episodes: int | None, seed: int
) -> dict[str, Any]:
    config = dataclasses.replace(pg.PG_DEFAULTS[algo], env=spec.name, seed=seed)
    if episodes is not None:
        config = dataclasses.replace(config, max_episodes=episodes)
    train = pg.reinforce if algo == "reinforce" else pg.actor_critic
    progress, on_episode = _progress(config.max_episodes, f"{algo} on {spec.name}")
    with progress:
        result = train(config, on_episode)
    evaluation = pg.evaluate(result.policy, spec.name, episodes=100, seed=seed + 10_000)
    return {
        "config": dataclasses.asdict(config),
        "metrics": {
            "train/solved_episode": result.solved_episode,
            "train/env_steps": result.env_steps,
            "train/seconds": result.seconds,
            "eval/return_mean": float(evaluation.mean()),
            "eval/return_min": float(evaluation.min()),
        },
        "returns": result.returns.tolist(),
    }


def policy_grid(spec: EnvSpec, policy: np.ndarray) -> list[str]:
    """The greedy policy of a grid world as rows of arrows; holes, cliff and goal as letters."""
    rows, cols = spec.grid  # type: ignore[misc]
    env = make_env(spec.name).unwrapped
    if hasattr(env, "desc"):  # FrozenLake: S start, F frozen, H hole, G goal
        cells = [[c.decode() for c in row] for row in env.desc]
    else:  # CliffWalking: start bottom-left, cliff along the bottom row, goal bottom-right
        cells = [["."] * cols for _ in range(rows)]
        cells[rows - 1][1 : cols - 1] = ["C"] * (cols - 2)
        cells[rows - 1][cols - 1] = "G"
    grid = []
    for r in range(rows):
        line = ""
        for c in range(cols):
            letter = cells[r][c]
            line += letter if letter in "HCG" else ARROWS[spec.name][policy[r * cols + c]]
        grid.append(line)
    return grid


def _plot_returns(returns: np.ndarray, title: str, path: Path, window: int = 100) -> None:
    fig = Figure(figsize=(7, 4))  # the object API: no pyplot state, no backend to choose
    ax = fig.subplots()
    episodes = np.arange(1, len(returns) + 1)
    ax.plot(episodes, returns, lw=0.5, alpha=0.4, label="episode return")
    if len(returns) >= window:
        running = np.convolve(returns, np.ones(window) / window, mode="valid")
        ax.plot(episodes[window - 1 :], running, lw=2, label=f"mean of last {window}")
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
