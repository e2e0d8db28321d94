"""Held-out evaluation: greedy pass@1 and sampled pass@k with 95% confidence intervals."""

from reasonrl.eval.evaluate import eval_size, evaluate
from reasonrl.eval.stats import mean_ci, pass_at_k, wilson_interval

__all__ = ["eval_size", "evaluate", "mean_ci", "pass_at_k", "wilson_interval"]
