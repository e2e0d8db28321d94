"""``correct``: each sample checked by its own task's rule, for task mixes and evaluation.

A sample with ``meta["tests"]`` is a programming problem: its program (picked out as
``meta["extract"]`` says, default the last fenced block) runs against the tests in the sandbox,
through the ``code`` verifier. Every other sample is checked by its exact <answer>. So one
reward term, and one notion of "correct" in evals, covers a mix of math and code problems.
"""

from __future__ import annotations

from collections.abc import Sequence

from reasonrl.rewards.base import RewardResult
from reasonrl.rewards.code import CodeVerifier
from reasonrl.rewards.numeric import exact_answer
from reasonrl.tasks.base import Sample


def is_code(sample: Sample) -> bool:
    """Whether ``sample`` is checked by running tests (it has ``meta["tests"]``)."""
    return "tests" in sample.meta


class CorrectVerifier:
    """1 if the completion solves its sample by the sample's task's own check, else 0.

    ``url``, ``token``, ``timeout``, ``workers``: the ``code`` verifier's options, used for the
    programming problems (its sandbox is only set up when the first one arrives, so a pure math
    run needs none).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        workers: int = 2,
    ) -> None:
        self.code_options = {"url": url, "token": token, "timeout": timeout, "workers": workers}
        self._code: dict[str, CodeVerifier] = {}

    def _code_verifier(self, sample: Sample) -> CodeVerifier:
        extract = sample.meta.get("extract", "fenced")
        if extract not in self._code:
            self._code[extract] = CodeVerifier(extract=extract, **self.code_options)
        return self._code[extract]

    def __call__(self, completion: str, sample: Sample) -> RewardResult:
        if is_code(sample):
            return self._code_verifier(sample)(completion, sample)
        return exact_answer(completion, sample)

    def batch(self, completions: Sequence[str], samples: Sequence[Sample]) -> list[RewardResult]:
        """``[self(c, s) for …]``, the programs run ``workers`` at a time."""
        results: dict[int, RewardResult] = {}
        code_rows: dict[str, list[int]] = {}
        for i, (completion, sample) in enumerate(zip(completions, samples, strict=True)):
            if is_code(sample):
                code_rows.setdefault(sample.meta.get("extract", "fenced"), []).append(i)
            else:
                results[i] = exact_answer(completion, sample)
        for rows in code_rows.values():
            verifier = self._code_verifier(samples[rows[0]])
            scored = verifier.batch([completions[i] for i in rows], [samples[i] for i in rows])
            for i, result in zip(rows, scored, strict=True):
                results[i] = result
        return [results[i] for i in range(len(samples))]
