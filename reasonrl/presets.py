"""Each algorithm's defaults, as data: the names of the functions to compose and their numbers.

docs/algorithms.md shows the same table with each algorithm's paper; a test keeps them equal.
Names refer to: ``advantage`` → ADVANTAGES (``gae`` needs a critic); ``ratio`` →
IMPORTANCE_RATIOS; ``kl`` → KL_ESTIMATORS; ``aggregation`` → AGGREGATIONS. Fields left out of
an entry take the class defaults.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AlgorithmDefaults:
    advantage: str
    aggregation: str
    paper: str  # arXiv id
    std_eps: float | None = None  # grpo: added to the group std; whitening: floor on the variance
    whiten: bool = False  # whiten advantages over the step's valid tokens (masked_whiten)
    ratio: str = "token"
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip: float | None = None
    kl: str | None = None
    kl_in: str | None = None  # "loss" (kl_in_loss) or "reward" (kl_in_reward)
    beta: float = 0.0
    ppo_epochs: int = 1
    gamma: float | None = None
    lam: float | None = None
    value_clip: float | None = None


ALGORITHM_DEFAULTS: dict[str, AlgorithmDefaults] = {
    "grpo": AlgorithmDefaults(
        advantage="grpo",
        aggregation="seq_mean_token_mean",
        paper="2402.03300",
        std_eps=1e-4,
        kl="k3",
        kl_in="loss",
        beta=0.04,
    ),
    "dr_grpo": AlgorithmDefaults(
        advantage="dr_grpo", aggregation="seq_mean_token_sum_norm", paper="2503.20783"
    ),
    "dapo": AlgorithmDefaults(
        advantage="grpo",
        aggregation="token_mean",
        paper="2503.14476",
        std_eps=1e-4,
        clip_eps_high=0.28,
    ),
    "gspo": AlgorithmDefaults(
        advantage="grpo",
        aggregation="seq_mean_token_mean",
        paper="2507.18071",
        std_eps=1e-4,
        ratio="sequence",
        clip_eps_low=3e-4,
        clip_eps_high=4e-4,
    ),
    "rloo": AlgorithmDefaults(
        advantage="rloo",
        aggregation="token_mean",
        paper="2402.14740",
        kl="k1",
        kl_in="reward",
        beta=0.05,
    ),
    "reinforce_pp": AlgorithmDefaults(
        advantage="reinforce_pp",
        aggregation="token_mean",
        paper="2501.03262",
        std_eps=1e-8,
        whiten=True,
        kl="k1",
        kl_in="reward",
        beta=0.01,
        gamma=1.0,
    ),
    "ppo": AlgorithmDefaults(
        advantage="gae",
        aggregation="token_mean",
        paper="1707.06347",
        std_eps=1e-8,
        whiten=True,
        kl="k1",
        kl_in="reward",
        beta=0.01,
        gamma=1.0,
        lam=0.95,
        value_clip=0.2,
    ),
}
