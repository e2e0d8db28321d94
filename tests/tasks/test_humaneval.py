"""HumanEval from the bundled data, scored through the sandbox by the ``code`` verifier."""

import pytest

from reasonrl.rewards.code import CodeVerifier
from reasonrl.sandbox import isolation_problem
from reasonrl.tasks.humaneval import humaneval_samples

needs_sandbox = pytest.mark.skipif(
    isolation_problem() is not None, reason=f"sandbox unavailable: {isolation_problem()}"
)


@pytest.fixture(scope="module")
def samples():
    return humaneval_samples()


def test_all_164_problems_with_tests_and_entry_points(samples):
    assert len(samples) == 164
    assert samples[0].meta["task_id"] == "HumanEval/0"
    for s in samples:
        tests = s.meta["tests"]
        assert tests["kind"] == "asserts"
        assert "def check(candidate)" in tests["test_code"]
        assert f"def {s.meta['entry_point']}(" in s.prompt
        assert s.answer.startswith(s.prompt)
        assert s.meta["code_prefix"] == s.prompt


@needs_sandbox
def test_every_canonical_solution_passes_and_wrong_ones_fail(samples):
    verifier = CodeVerifier(extract="raw", workers=2)
    bodies = [s.answer[len(s.prompt) :] for s in samples]
    results = verifier.batch(bodies, samples)
    pairs = zip(samples, results, strict=True)
    failing = [(s.meta["task_id"], r.details) for s, r in pairs if r.score != 1.0]
    assert not failing
    wrong = verifier.batch(["    return None\n"] * 8, samples[:8])
    assert [r.score for r in wrong] == [0.0] * 8
    assert {r.status for r in wrong} == {"wrong"}
