"""Policy gradients on a continuous-state env (CartPole): REINFORCE with a learned baseline and
one-step actor-critic, small torch MLPs on CPU.

- ``reinforce``: each update plays one full episode in each of ``num_envs`` parallel envs,
  computes returns-to-go ``G_t``, and ascends ``Σ_t ∇log π(a_t|s_t) (G_t − V(s_t))``; the
  baseline ``V`` is regressed onto ``G_t``. Monte Carlo: a time-limit truncation ends the return.
- ``actor_critic``: one update per environment step (batched over ``num_envs`` envs) with the
  TD error ``δ = r + γ V(s') − V(s)`` as the advantage (bootstrapping through truncations, not
  through terminations). Sutton & Barto's ``γ^t`` factor on the actor step is dropped, as
  deep-RL practice does.
- ``gradient_variance``: the spread of per-episode REINFORCE gradient estimates with and without
  the baseline, on the same episodes, to show what the baseline buys.

Training stops when the mean return of the last ``window`` training episodes reaches
``target_return`` (CartPole-v1: 475 of a possible 500) or the budget runs out.

Run: ``reasonrl classic reinforce --env CartPole-v1`` (CPU, 10–20 s on one thread; set
``OMP_NUM_THREADS=1`` on small machines — the networks are too small to gain from threads).
Left out: GAE / n-step returns, entropy bonus, PPO-style clipping, continuous actions, GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from reasonrl.classic.envs import env_spec


@dataclass(frozen=True)
class PGConfig:
    """Hyper-parameters of REINFORCE / actor-critic; every size names its unit."""

    env: str = "CartPole-v1"
    num_envs: int = 16  # parallel envs; for REINFORCE also the episodes per update
    hidden: int = 64  # width of the two hidden layers of the policy and value MLPs
    gamma: float = 0.99  # discount
    policy_lr: float = 2e-3  # Adam step size of the policy
    value_lr: float = 1e-2  # Adam step size of the baseline / critic
    value_epochs: int = 5  # REINFORCE: full-batch regression steps of V per update
    normalize_advantages: bool = True  # REINFORCE: scale advantages to zero mean, unit std
    max_episodes: int = 3_000  # budget in completed training episodes
    max_seconds: float | None = None  # optional wall-clock budget
    target_return: float | None = 475.0  # stop once the windowed mean return reaches this
    window: int = 100  # episodes in the windowed mean
    seed: int = 0  # seeds network init, env resets and action sampling


# Per-algorithm defaults for CartPole-v1, used by ``reasonrl classic`` and the tests: each
# solved seeds 0–5 (REINFORCE in 8–12 s, actor-critic in 11–14 s on one CPU thread). One-step
# actor-critic at policy_lr=1e-3 collapsed on 1 seed of 5: it needs the smaller step.
PG_DEFAULTS: dict[str, PGConfig] = {
    "reinforce": PGConfig(num_envs=16, policy_lr=2e-3, value_lr=1e-2, max_episodes=3_000),
    "actor-critic": PGConfig(num_envs=16, policy_lr=5e-4, value_lr=5e-3, max_episodes=5_000),
}


@dataclass(frozen=True)
class PGResult:
    """Trained networks and the training curve."""

    policy: nn.Module  # obs [B, obs_dim] → logits [B, n_actions]
    value: nn.Module  # obs [B, obs_dim] → V [B, 1]
    returns: np.ndarray  # [episodes] undiscounted return of each finished training episode
    env_steps: int  # environment transitions used for learning
    seconds: float
    solved_episode: int | None  # episodes done when the windowed mean first hit the target
    config: PGConfig = field(repr=False)


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, n_out),
    )  # fmt: skip


def returns_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = Σ_{k≥t} γ^{k−t} r_k`` along dim 0; rewards ``[T, ...]`` → ``[T, ...]``.

    Rewards after an episode's end must already be zero (padding).
    """
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def make_vec_env(name: str, num_envs: int, seed: int | None = None) -> gym.vector.VectorEnv:
    """Vectorised env (gymnasium's numpy CartPole where it exists), autoreset on the next step."""
    gym_id = env_spec(name).gym_id
    try:
        envs = gym.make_vec(gym_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    except (gym.error.Error, ValueError):
        envs = gym.make_vec(gym_id, num_envs=num_envs, vectorization_mode="sync")
    return envs


def _sample(policy: nn.Module, obs: np.ndarray, rng: np.random.Generator, greedy: bool = False):
    """Actions [N] from the policy's softmax (numpy sampling: torch.distributions is slow)."""
    with torch.no_grad():
        probs = torch.softmax(policy(torch.as_tensor(obs, dtype=torch.float32)), -1).numpy()
    if greedy:
        return probs.argmax(1)
    u = rng.random(len(probs))[:, None]
    return np.minimum((u >= probs.cumsum(1)).sum(1), probs.shape[1] - 1)


@dataclass(frozen=True)
class EpisodeBatch:
    """One episode per env, padded to the longest; ``mask`` marks real steps."""

    obs: torch.Tensor  # [T, N, obs_dim]
    actions: torch.Tensor  # [T, N] int64
    rewards: torch.Tensor  # [T, N], zero on padding
    mask: torch.Tensor  # [T, N] bool

    @property
    def totals(self) -> np.ndarray:
        return self.rewards.sum(0).numpy()


def collect_episodes(
    envs: gym.vector.VectorEnv,
    policy: nn.Module,
    rng: np.random.Generator,
    seed: int | None = None,
    greedy: bool = False,
) -> EpisodeBatch:
    """Reset every env and play until each has finished one episode (later ones are ignored)."""
    obs, _ = envs.reset(seed=seed)
    active = np.ones(envs.num_envs, dtype=bool)
    obs_buf, act_buf, rew_buf, mask_buf = [], [], [], []
    while active.any():
        actions = _sample(policy, obs, rng, greedy)
        next_obs, reward, terminated, truncated, _ = envs.step(actions)
        obs_buf.append(obs)
        act_buf.append(actions)
        rew_buf.append(np.where(active, reward, 0.0))
        mask_buf.append(active.copy())
        active &= ~(terminated | truncated)
        obs = next_obs
    return EpisodeBatch(
        obs=torch.as_tensor(np.stack(obs_buf), dtype=torch.float32),
        actions=torch.as_tensor(np.stack(act_buf), dtype=torch.int64),
        rewards=torch.as_tensor(np.stack(rew_buf), dtype=torch.float32),
        mask=torch.as_tensor(np.stack(mask_buf)),
    )


def _networks(envs: gym.vector.VectorEnv, config: PGConfig) -> tuple[nn.Module, nn.Module]:
    obs_dim = envs.single_observation_space.shape[0]  # type: ignore[index]
    n_actions = envs.single_action_space.n  # type: ignore[attr-defined]
    with torch.random.fork_rng(devices=[]):  # seed the init without touching global RNG state
        torch.manual_seed(config.seed)
        return mlp(obs_dim, config.hidden, n_actions), mlp(obs_dim, config.hidden, 1)


class _Tracker:
    """Episode returns, the windowed-mean stopping rule, and the budget."""

    def __init__(self, config: PGConfig, on_episode: Callable[[int, float], None] | None):
        self.config, self.on_episode = config, on_episode
        self.returns: list[float] = []
        self.solved_episode: int | None = None
        self.start = time.perf_counter()

    def add(self, episode_return: float) -> None:
        self.returns.append(float(episode_return))
        if self.on_episode is not None:
            self.on_episode(len(self.returns) - 1, float(episode_return))
        window = self.returns[-self.config.window :]
        target = self.config.target_return
        if (
            self.solved_episode is None
            and target is not None
            and len(window) == self.config.window
            and np.mean(window) >= target
        ):
            self.solved_episode = len(self.returns)

    @property
    def done(self) -> bool:
        out_of_time = (
            self.config.max_seconds is not None
            and time.perf_counter() - self.start > self.config.max_seconds
        )
        return (
            self.solved_episode is not None
            or len(self.returns) >= self.config.max_episodes
            or out_of_time
        )


def reinforce(
    config: PGConfig = PGConfig(), on_episode: Callable[[int, float], None] | None = None
) -> PGResult:
    """REINFORCE with a learned state-value baseline."""
    envs = make_vec_env(config.env, config.num_envs)
    policy, value = _networks(envs, config)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=config.policy_lr)
    value_opt = torch.optim.Adam(value.parameters(), lr=config.value_lr)
    rng = np.random.default_rng(config.seed)
    tracker, env_steps = _Tracker(config, on_episode), 0

    for update in range(10**9):
        if tracker.done:
            break
        batch = collect_episodes(envs, policy, rng, seed=config.seed if update == 0 else None)
        for total in batch.totals:
            tracker.add(total)
        mask = batch.mask
        obs, actions = batch.obs[mask], batch.actions[mask]  # [M, obs_dim], [M]
        returns = returns_to_go(batch.rewards, config.gamma)[mask]  # [M]
        env_steps += int(mask.sum())

        with torch.no_grad():
            advantages = returns - value(obs).squeeze(-1)
        if config.normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        logp = torch.log_softmax(policy(obs), -1).gather(1, actions[:, None]).squeeze(1)
        policy_loss = -(logp * advantages).mean()
        policy_opt.zero_grad()
        policy_loss.backward()
        policy_opt.step()

        for _ in range(config.value_epochs):
            value_loss = 0.5 * (value(obs).squeeze(-1) - returns).pow(2).mean()
            value_opt.zero_grad()
            value_loss.backward()
            value_opt.step()
    envs.close()
    seconds = time.perf_counter() - tracker.start
    returns_arr = np.asarray(tracker.returns)
    return PGResult(policy, value, returns_arr, env_steps, seconds, tracker.solved_episode, config)


def actor_critic(
    config: PGConfig = PGConfig(), on_episode: Callable[[int, float], None] | None = None
) -> PGResult:
    """One-step (TD(0)) actor-critic, one update per batched environment step."""
    envs = make_vec_env(config.env, config.num_envs)
    policy, value = _networks(envs, config)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=config.policy_lr)
    value_opt = torch.optim.Adam(value.parameters(), lr=config.value_lr)
    rng = np.random.default_rng(config.seed)
    tracker, env_steps = _Tracker(config, on_episode), 0

    obs, _ = envs.reset(seed=config.seed)
    # With next-step autoreset, the step after an episode ends only resets that env: skip it.
    resetting = np.zeros(config.num_envs, dtype=bool)
    episode_return = np.zeros(config.num_envs)
    while not tracker.done:
        obs_t = torch.as_tensor(obs, dtype=torch.float32)
        logits = policy(obs_t)
        probs = torch.softmax(logits.detach(), -1).numpy()
        u = rng.random(config.num_envs)[:, None]
        actions = np.minimum((u >= probs.cumsum(1)).sum(1), probs.shape[1] - 1)
        next_obs, reward, terminated, truncated, _ = envs.step(actions)

        valid = torch.as_tensor(~resetting, dtype=torch.float32)
        v = value(obs_t).squeeze(-1)
        with torch.no_grad():
            v_next = value(torch.as_tensor(next_obs, dtype=torch.float32)).squeeze(-1)
        not_terminal = torch.as_tensor(~terminated, dtype=torch.float32)
        target = torch.as_tensor(reward, dtype=torch.float32) + config.gamma * v_next * not_terminal
        delta = target - v  # TD error: the critic's loss and the actor's advantage
        logp = torch.log_softmax(logits, -1).gather(1, torch.as_tensor(actions)[:, None])
        n_valid = valid.sum().clamp(min=1.0)
        policy_loss = -(logp.squeeze(1) * delta.detach() * valid).sum() / n_valid
        value_loss = 0.5 * (delta.pow(2) * valid).sum() / n_valid
        policy_opt.zero_grad()
        value_opt.zero_grad()
        (policy_loss + value_loss).backward()
        policy_opt.step()
        value_opt.step()

        env_steps += int(valid.sum())
        episode_return += np.where(resetting, 0.0, reward)
        for i in np.flatnonzero((terminated | truncated) & ~resetting):
            tracker.add(episode_return[i])
            episode_return[i] = 0.0
        resetting = terminated | truncated
        obs = next_obs
    envs.close()
    seconds = time.perf_counter() - tracker.start
    returns_arr = np.asarray(tracker.returns)
    return PGResult(policy, value, returns_arr, env_steps, seconds, tracker.solved_episode, config)


def evaluate(
    policy: nn.Module, env: str = "CartPole-v1", episodes: int = 100, seed: int = 10_000,
    greedy: bool = False,
) -> np.ndarray:  # fmt: skip
    """Undiscounted returns [episodes] of fresh episodes (sampled actions unless ``greedy``)."""
    envs = make_vec_env(env, episodes)
    batch = collect_episodes(envs, policy, np.random.default_rng(seed), seed=seed, greedy=greedy)
    envs.close()
    return batch.totals


def gradient_variance(
    policy: nn.Module, value: nn.Module, env: str = "CartPole-v1", episodes: int = 200,
    gamma: float = 0.99, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Variance of the per-episode REINFORCE gradient estimate, with and without the baseline.

    For each sampled episode ``i``: ``g_i = Σ_t ∇_θ log π(a_t|s_t) (G_t − b(s_t))`` with
    ``b = value`` or ``b = 0`` (raw returns, no normalisation), on the same episodes. Returns the
    total variance ``E‖g − ḡ‖²`` (trace of the covariance) of each, their ratio, the norms of
    the two mean gradients, and the norm of the mean difference beside its standard error (the
    baseline leaves the expectation unchanged, so the difference is pure noise).
    """
    envs = make_vec_env(env, episodes)
    batch = collect_episodes(envs, policy, np.random.default_rng(seed), seed=seed)
    envs.close()
    returns = returns_to_go(batch.rewards, gamma)  # [T, N]
    with torch.no_grad():
        baseline = value(batch.obs).squeeze(-1)  # [T, N]
    params = [p for p in policy.parameters() if p.requires_grad]
    grads: dict[str, list[torch.Tensor]] = {"without_baseline": [], "with_baseline": []}
    for i in range(episodes):
        steps = batch.mask[:, i]
        obs, actions = batch.obs[steps, i], batch.actions[steps, i]
        logp = torch.log_softmax(policy(obs), -1).gather(1, actions[:, None]).squeeze(1)
        for name, adv in (
            ("without_baseline", returns[steps, i]),
            ("with_baseline", returns[steps, i] - baseline[steps, i]),
        ):
            g = torch.autograd.grad((logp * adv).sum(), params, retain_graph=True)
            grads[name].append(torch.cat([x.reshape(-1) for x in g]))
    out: dict[str, float] = {}
    stacked = {name: torch.stack(gs) for name, gs in grads.items()}  # [episodes, n_params]
    for name, g in stacked.items():
        out[f"variance/{name}"] = float(g.var(0).sum())
        out[f"mean_norm/{name}"] = float(g.mean(0).norm())
    out["variance/ratio"] = out["variance/with_baseline"] / out["variance/without_baseline"]
    # Σ_t ∇log π(a_t|s_t) b(s_t) has expectation zero: its sample mean should be noise-sized.
    diff = stacked["without_baseline"] - stacked["with_baseline"]
    out["bias/mean_norm"] = float(diff.mean(0).norm())
    out["bias/standard_error"] = float((diff.var(0).sum() / episodes).sqrt())
    return out
