"""``tool_calls``: the tool calls an episode made, to charge a cost per call.

With a negative weight it is a price: ``tool_cost: {verifier: tool_calls, weight: -0.1}``
beside a correctness term makes a call worth making only where it raises the chance of a right
answer by more than 0.1, so RL can teach a model when to call a tool, not only how.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reasonrl.rewards.base import RewardResult
from reasonrl.tasks.base import Sample

if TYPE_CHECKING:
    from reasonrl.rollout.base import Episode


def tool_calls(
    completion: str, sample: Sample, *, episode: Episode | None = None, failed_only: bool = False
) -> RewardResult:
    """The number of calls the episode made (``failed_only``: those that came back as errors),
    0 for a single-turn completion (no episode)."""
    if episode is None:
        return RewardResult(0.0, "ok", {"calls": 0})
    made = sum(episode.errors.values()) if failed_only else episode.calls_made
    return RewardResult(float(made), "ok", {"calls": made})
