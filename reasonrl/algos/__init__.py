"""RL and SFT objectives as pure tensor functions, with shapes in each docstring.

Nothing here touches a model, an optimizer or a file: callers pass tensors in and get
tensors out, which is what makes every function testable with hand-worked examples.
Functions that have alternatives are picked by name from the registries below (advantage
estimators also by a user's import path, ``get_advantage``); each
algorithm's choices are data in ``reasonrl.presets.ALGORITHM_DEFAULTS`` (docs/algorithms.md).
"""

from reasonrl.algos.advantages import (
    ADVANTAGES,
    AdvantageInput,
    Estimator,
    dr_grpo_advantages,
    get_advantage,
    grpo_advantages,
    rloo_advantages,
)
from reasonrl.algos.aggregate import AGGREGATIONS, aggregate
from reasonrl.algos.dpo import DPO_LOSS_TYPES, dpo_loss
from reasonrl.algos.kl import KL_ESTIMATORS, kl_estimate, kl_in_loss, kl_in_reward
from reasonrl.algos.logprobs import token_entropy, token_logprobs
from reasonrl.algos.mismatch import TIS_MODES, mismatch_weights
from reasonrl.algos.policy import (
    IMPORTANCE_RATIOS,
    clipped_surrogate,
    entropy_bonus,
    importance_ratio,
)
from reasonrl.algos.returns import gae, reinforce_pp_advantages
from reasonrl.algos.reward import bradley_terry_loss
from reasonrl.algos.sft import sft_loss
from reasonrl.algos.value import value_loss
from reasonrl.algos.whiten import masked_mean, masked_var, masked_whiten

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "AdvantageInput",
    "DPO_LOSS_TYPES",
    "Estimator",
    "IMPORTANCE_RATIOS",
    "KL_ESTIMATORS",
    "TIS_MODES",
    "aggregate",
    "bradley_terry_loss",
    "clipped_surrogate",
    "dpo_loss",
    "dr_grpo_advantages",
    "entropy_bonus",
    "gae",
    "get_advantage",
    "grpo_advantages",
    "importance_ratio",
    "kl_estimate",
    "kl_in_loss",
    "kl_in_reward",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "mismatch_weights",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "sft_loss",
    "token_entropy",
    "token_logprobs",
    "value_loss",
]
