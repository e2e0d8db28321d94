"""``reasoning_gym``: a reasoning-gym task's own scorer, on the <answer> tag.

reasoning-gym's default scorer gives substring partial credit ("15" for "5" scores 0.5), which
a policy learns to exploit; here anything short of full marks scores 0 unless ``partial=True``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from reasonrl.rewards.base import RewardResult
from reasonrl.rewards.extract import extract_answer
from reasonrl.tasks.base import Sample


@functools.cache
def _scorer(dataset: str) -> Callable[[str | None, dict[str, Any]], float]:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(dataset)


def reasoning_gym_score(
    completion: str, sample: Sample, *, dataset: str | None = None, partial: bool = False
) -> RewardResult:
    """The dataset's ``score_answer`` on the <answer> (``dataset`` defaults to the sample's
    ``meta["source_dataset"]``). A scorer that raises on the answer counts as ``unparsed``."""
    name = dataset or sample.meta.get("source_dataset")
    if name is None:
        return RewardResult(None, "error", {"reason": "no dataset name for the sample"})
    answer = extract_answer(completion)
    if answer is None:
        return RewardResult(0.0, "unparsed")
    entry = {"question": sample.prompt, "answer": sample.answer, "metadata": sample.meta}
    try:
        score = float(_scorer(name)(answer, entry))
    except Exception as e:  # the scorer choked on the model's answer: the answer's fault
        return RewardResult(0.0, "unparsed", {"answer": answer, "reason": repr(e)[:200]})
    if not partial:
        score = 1.0 if score >= 1.0 else 0.0
    return RewardResult(score, "ok" if score >= 1.0 else "wrong", {"answer": answer})
