"""RL and SFT objectives as pure tensor functions, with shapes in each docstring.

Nothing here touches a model, an optimizer or a file: callers pass tensors in and get
tensors out, which is what makes every function testable with hand-worked examples.
Functions that have alternatives are picked by name from the registries below.
"""

from reasonrl.algos.advantages import ADVANTAGES, grpo_advantages
from reasonrl.algos.aggregate import AGGREGATIONS, aggregate
from reasonrl.algos.kl import KL_ESTIMATORS, kl_estimate
from reasonrl.algos.logprobs import token_entropy, token_logprobs
from reasonrl.algos.policy import clipped_surrogate
from reasonrl.algos.sft import sft_loss

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "aggregate",
    "clipped_surrogate",
    "grpo_advantages",
    "kl_estimate",
    "sft_loss",
    "token_entropy",
    "token_logprobs",
]
