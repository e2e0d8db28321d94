"""``code``: run the completion's program against the sample's tests in the sandbox."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from pydantic import ValidationError

from reasonrl.config import ConfigError
from reasonrl.rewards.base import RewardResult
from reasonrl.rewards.extract import extract_answer, last_code_block
from reasonrl.sandbox import EvaluateRequest, SandboxUnavailable, sandbox_executor
from reasonrl.sandbox.schema import MAX_CODE_CHARS
from reasonrl.tasks.base import Sample


def prefix_helpers(prefix: str, entry_point: str | None) -> str:
    """The functions and classes the prefix defines, other than the one to write, as source.

    They go again after the model's code, so that the tests call the prompt's helpers: a
    completion that redefines HumanEval/38's ``encode_cyclic`` (or /32's ``poly``) as the
    identity would otherwise pass a test that only checks ``decode(encode(s)) == s``."""
    try:
        tree = ast.parse(prefix)
    except (SyntaxError, ValueError):
        return ""
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return "\n\n\n".join(
        ast.unparse(node)
        for node in tree.body
        if isinstance(node, kinds) and node.name != entry_point
    )


class CodeVerifier:
    """1 if the program passes ``sample.meta["tests"]`` (a sandbox ``/evaluate`` test spec),
    else 0; with ``partial``, the fraction of io cases passed.

    The program is ``sample.meta["code_prefix"]`` (HumanEval: the prompt, for its imports and
    helpers) followed by the last fenced python block of the completion (``extract="fenced"``),
    the whole completion (``"raw"``: a base model continuing the prompt) or the text of its
    <answer> tag (``"answer"``: one-line programs in the R1 format), then the prefix's helpers
    again (:func:`prefix_helpers`).

    ``url``: a sandbox server (``reasonrl sandbox serve``; token from ``token`` or
    ``REASONRL_SANDBOX_TOKEN``); without one, jails run in-process (root needed, as for the
    server). ``timeout``: seconds per run; ``workers``: concurrent runs in :meth:`batch`.

    A program that runs out of time scores 0 (status ``wrong``, ``details["verdict"]`` timeout):
    that is the program's fault. Only a sandbox failure scores None (status ``error``).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        workers: int = 2,
        extract: Literal["fenced", "raw", "answer"] = "fenced",
        partial: bool = False,
    ) -> None:
        if extract not in ("fenced", "raw", "answer"):
            raise ConfigError(f"code verifier: extract {extract!r} is not fenced, raw or answer")
        self.timeout, self.workers, self.extract, self.partial = timeout, workers, extract, partial
        self.executor = sandbox_executor(url, token, "code reward")

    def __call__(self, completion: str, sample: Sample) -> RewardResult:
        code = {
            "fenced": last_code_block,
            "answer": extract_answer,
            "raw": lambda text: text,
        }[self.extract](completion)
        if not code or not code.strip():
            return RewardResult(0.0, "unparsed")
        prefix = sample.meta.get("code_prefix", "")
        program = prefix + ("\n" if prefix and not prefix.endswith("\n") else "") + code
        tests = sample.meta.get("tests")
        entry = tests.get("entry_point") if isinstance(tests, dict) else None
        if helpers := prefix_helpers(prefix, entry):
            program += "\n\n\n" + helpers + "\n"
        if len(program) > MAX_CODE_CHARS:
            return RewardResult(0.0, "unparsed", {"reason": "program too long"})
        try:
            request = EvaluateRequest(
                code=program, tests=sample.meta["tests"], timeout=self.timeout
            )
        except (KeyError, ValidationError) as e:
            return RewardResult(None, "error", {"reason": f"bad tests in the sample: {e}"})
        try:
            verdict = self.executor.evaluate(request)
        except (SandboxUnavailable, OSError) as e:
            return RewardResult(None, "error", {"reason": str(e)[:500]})
        details = {
            "verdict": verdict.status,
            "passed": verdict.passed,
            "total": verdict.total,
            "reason": verdict.details[0].reason if verdict.details else "",
        }
        if verdict.status == "error":
            return RewardResult(None, "error", details)
        if verdict.status == "passed":
            return RewardResult(1.0, "ok", details)
        score = verdict.passed / verdict.total if self.partial else 0.0
        return RewardResult(score, "wrong", details)

    def batch(self, completions: Sequence[str], samples: Sequence[Sample]) -> list[RewardResult]:
        """``[self(c, s) for c, s in zip(...)]``, ``workers`` at a time."""
        with ThreadPoolExecutor(self.workers) as ex:
            return list(ex.map(self, completions, samples))
