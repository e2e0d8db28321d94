"""``reasoning_gym``: a reasoning-gym task's own scorer on the <answer> tag, run in the sandbox.

Several reasoning-gym scorers execute the answer text as Python: sympy's ``parse_expr``
(intermediate_integration, simple_integration, polynomial_multiplication, puzzle24, countdown)
or plain ``eval`` (n_queens, spiral_matrix, binary_matrix, string_insertion). So the scorers
never run in the trainer process; each batch is one sandbox program (:data:`_PROGRAM`) that
imports reasoning_gym once and forks one child per answer, which:

- keeps the host out of reach (the jail: namespaces, rlimits, no network, a random uid);
- keeps an answer that patches its scorer (``sympy.simplify`` replaced) from touching any other
  answer's score (the child dies with its changes);
- cuts an answer that never finishes (countdown's ``9**9**9``) at ``timeout`` seconds: the child
  is killed and the answer scores 0 with status ``timeout`` (the answer's fault, as a program
  past its time limit).

The child could still rig its *own* score (read the gold from the scorer's frame, patch the
comparison), so code never reaches a scorer: an answer for a sympy-parsed dataset must be a
plain arithmetic expression (numbers, names, operators, calls of names; no attributes, strings,
subscripts or builtins such as ``eval``), checked here with :mod:`ast` before it is sent, and
the ``eval`` of the eval-ing scorers is ``ast.literal_eval`` in the child. Results come back
as stdout lines led by a per-run nonce; a child's own stdout and stderr go to /dev/null.

A few library scorers are wrong and are replaced by a strict comparison here (:data:`_STRICT`):
game_of_life_halting compares ``bool(answer) == bool(gold)``, so "banana" matched "False".

Scores: 1 for full marks, else 0, unless ``partial=True`` (reasoning-gym's default gives
substring partial credit, "15" for "5" scores 0.5, which a policy learns to exploit). A scorer
that raises on the answer: 0, ``unparsed``. The sandbox unable to run (no isolation here, the
server down, reasoning_gym not importable in the jail): None, ``error``.
"""

from __future__ import annotations

import ast
import builtins
import json
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from reasonrl.config import ConfigError
from reasonrl.rewards.base import RewardResult
from reasonrl.rewards.extract import extract_answer
from reasonrl.sandbox import (
    RunCodeRequest,
    Sandbox,
    SandboxClient,
    SandboxUnavailable,
    sandbox_executor,
)
from reasonrl.sandbox.schema import MAX_CODE_CHARS, MAX_TIMEOUT_S
from reasonrl.tasks.base import Sample

# Scorers that hand the answer to sympy's parse_expr (an eval with sympy's names in scope).
_SYMPY_PARSED = frozenset(
    {
        "countdown",
        "intermediate_integration",
        "polynomial_multiplication",
        "puzzle24",
        "simple_integration",
    }
)
# Scorers that call the builtin eval on the answer; in the child their module's ``eval`` is
# ast.literal_eval, so a list literal still parses and code does not run.
_LITERAL_EVAL = frozenset({"binary_matrix", "n_queens", "spiral_matrix", "string_insertion"})
# Datasets whose library scorer is wrong, scored by a case-insensitive exact match with the gold
# instead. game_of_life_halting: bool("False") is True, so any non-empty answer matched gold
# False. Checked and fine as they are (a non-answer scores 0): circuit_logic, course_schedule,
# isomorphic_strings, ransom_note, syllogism.
_STRICT = frozenset({"game_of_life_halting"})

_SAFE_BUILTINS = frozenset({"abs", "max", "min", "pow", "round"})
_EXPRESSION_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.operator,
    ast.unaryop,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Call,
    ast.Tuple,
)
_MAX_EXPRESSION_CHARS = 2000
_RUN_MARGIN_S = 5.0  # of a run's wall clock, kept for the jail's setup and the reply
_STDIN_CHARS = MAX_CODE_CHARS // 2  # items per run are packed below this


def _plain_expression(text: str) -> bool:
    """Whether ``text`` is arithmetic only: numbers, names that are neither private nor Python
    builtins (sin, x, C, pi), operators, and calls of such names with positional arguments."""
    if len(text) > _MAX_EXPRESSION_CHARS:
        return False
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _EXPRESSION_NODES):
            return False
        if isinstance(node, ast.Constant) and type(node.value) not in (int, float, complex):
            return False
        if isinstance(node, ast.Name) and (
            node.id.startswith("_")
            or (hasattr(builtins, node.id) and node.id not in _SAFE_BUILTINS)
        ):
            return False
        if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Name) or node.keywords):
            return False
    return True


def _strict_match(answer: str, gold: Any) -> bool:
    return answer.strip().lower() == str(gold).strip().lower()


class ReasoningGymVerifier:
    """The dataset's ``score_answer`` on the <answer>, in the sandbox (``dataset`` defaults to
    the sample's ``meta["source_dataset"]``).

    ``url``: a sandbox server (``reasonrl sandbox serve``; token from ``token`` or
    ``REASONRL_SANDBOX_TOKEN``); without one, jails run in-process (root needed).
    ``timeout``: seconds per answer; ``workers``: concurrent sandbox runs in :meth:`batch`;
    ``memory_mb``: address space of the scoring processes (numpy, sympy and matplotlib load).
    """

    def __init__(
        self,
        *,
        dataset: str | None = None,
        partial: bool = False,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 5.0,
        workers: int = 2,
        memory_mb: int = 2048,
    ) -> None:
        self.dataset, self.partial, self.timeout = dataset, partial, timeout
        self.workers, self.memory_mb = workers, memory_mb
        self.url, self.token = url, token
        self.executor: Sandbox | SandboxClient | None = None  # made on first use

    def __call__(self, completion: str, sample: Sample) -> RewardResult:
        return self.batch([completion], [sample])[0]

    def batch(self, completions: Sequence[str], samples: Sequence[Sample]) -> list[RewardResult]:
        """Score all pairs: the ones decided here (no answer, strict datasets, code where an
        expression belongs) at once, the rest in as few sandbox runs as fit."""
        results: list[RewardResult | None] = [None] * len(completions)
        items: dict[int, dict[str, Any]] = {}
        for i, (completion, sample) in enumerate(zip(completions, samples, strict=True)):
            name = self.dataset or sample.meta.get("source_dataset")
            answer = extract_answer(completion)
            if name is None:
                results[i] = RewardResult(
                    None, "error", {"reason": "no dataset name for the sample"}
                )
            elif answer is None:
                results[i] = RewardResult(0.0, "unparsed")
            elif name in _STRICT:
                results[i] = self._result(float(_strict_match(answer, sample.answer)), answer)
            elif name in _SYMPY_PARSED and not _plain_expression(answer):
                reason = "not a plain arithmetic expression"
                results[i] = RewardResult(
                    0.0, "unparsed", {"answer": answer[:200], "reason": reason}
                )
            else:
                entry = {
                    "question": sample.prompt,
                    "answer": sample.answer,
                    "metadata": sample.meta,
                }
                items[i] = {"dataset": name, "answer": answer, "entry": entry}
        if items:
            for i, raw in self._run_all(items).items():
                results[i] = self._from_raw(raw, items[i]["answer"])
        return [r if r is not None else RewardResult(None, "error") for r in results]

    def _result(self, score: float, answer: str) -> RewardResult:
        if not self.partial:
            score = 1.0 if score >= 1.0 else 0.0
        return RewardResult(score, "ok" if score >= 1.0 else "wrong", {"answer": answer[:200]})

    def _from_raw(self, raw: dict[str, Any], answer: str) -> RewardResult:
        details = {"answer": answer[:200], "reason": str(raw.get("reason", ""))[:500]}
        if raw.get("status") == "timeout":
            return RewardResult(0.0, "timeout", details)
        if raw.get("status") == "unparsed":  # the scorer raised on the answer
            return RewardResult(0.0, "unparsed", details)
        if "score" in raw:
            try:
                return self._result(float(raw["score"]), answer)
            except (TypeError, ValueError):
                return RewardResult(0.0, "unparsed", details)
        return RewardResult(None, "error", details)

    def _run_all(self, items: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Raw results by index: packed into runs below the stdin limit, ``workers`` at once."""
        if self.executor is None:
            try:
                self.executor = sandbox_executor(self.url, self.token, "reasoning_gym reward")
            except ConfigError as e:  # the reward cannot be computed here: None, not 0
                return {i: {"reason": str(e)} for i in items}
        chunks: list[list[int]] = [[]]
        size = 0
        for i, item in items.items():
            n = len(json.dumps(item, default=str))
            if chunks[-1] and size + n > _STDIN_CHARS:
                chunks.append([])
                size = 0
            chunks[-1].append(i)
            size += n
        out: dict[int, dict[str, Any]] = {}
        with ThreadPoolExecutor(self.workers) as ex:
            for part in ex.map(lambda c: self._run_chunk({i: items[i] for i in c}), chunks):
                out.update(part)
        return out

    def _run_chunk(self, items: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Sandbox runs until every item has a result: a run stops starting items when its
        deadline is near, and the rest go to the next run."""
        out: dict[int, dict[str, Any]] = {}
        pending = dict(items)
        while pending:
            got, finished = self._run_once(list(pending.values()))
            order = list(pending)
            for k, raw in got.items():
                out[order[k]] = raw
                pending.pop(order[k])
            if finished is not True or not got:  # the run failed, or made no progress
                error = {"reason": finished if isinstance(finished, str) else "no result"}
                out.update({i: error for i in pending})
                break
        return out

    def _run_once(self, items: list[dict[str, Any]]) -> tuple[dict[int, dict[str, Any]], Any]:
        """One sandbox run: (raw results by position in ``items``, True when the program ended
        normally, else why not)."""
        nonce = secrets.token_hex(16)
        request = {
            "nonce": nonce,
            "timeout": self.timeout,
            "budget": MAX_TIMEOUT_S - _RUN_MARGIN_S,
            "literal_eval": sorted(_LITERAL_EVAL),
            "items": items,
        }
        assert self.executor is not None
        try:
            response = self.executor.run_code(
                RunCodeRequest(
                    code=_PROGRAM,
                    stdin=json.dumps(request, default=str),
                    run_timeout=MAX_TIMEOUT_S,
                    memory_limit_MB=self.memory_mb,
                    packages=True,  # reasoning_gym and its needs, read-only
                )
            )
        except (SandboxUnavailable, OSError, ValueError) as e:
            return {}, f"sandbox: {str(e)[:500]}"
        run = response.run_result
        if run is None:
            return {}, f"sandbox: {response.status} {response.message[:500]}"
        got: dict[int, dict[str, Any]] = {}
        finished: Any = f"the scoring program ended early: {run.status} {run.stderr[-500:]}"
        for line in run.stdout.splitlines():
            head, _, body = line.partition(" ")
            if head != nonce:
                continue
            record = json.loads(body)
            if "fatal" in record:
                return {}, record["fatal"]
            if "done" in record:
                finished = True
            elif isinstance(record.get("i"), int) and 0 <= record["i"] < len(items):
                got[record["i"]] = record
        return got, finished


# Runs in the jail: stdin {nonce, timeout, budget, literal_eval, items}; stdout one line
# "NONCE {json}" per scored item ({"i", "score"} or {"i", "status", "reason"}), then
# "NONCE {"done": true}" (also when the budget ran out: the items left are not reported).
_PROGRAM = r"""
import ast, json, os, select, signal, sys, time

START = time.monotonic()
request = json.loads(sys.stdin.read())
NONCE = request.pop("nonce")


def emit(record):
    sys.stdout.write(NONCE + " " + json.dumps(record) + "\n")
    sys.stdout.flush()


for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"
os.environ["MPLCONFIGDIR"] = "/tmp"
try:  # the jail puts the server's site directories on the path of a packages request
    import reasoning_gym
except BaseException as e:
    emit({"fatal": f"reasoning_gym does not import in the jail: {type(e).__name__}: {e}"})
    sys.exit(0)

scorers = {}


def child(item, w):
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    fn = scorers[item["dataset"]]
    try:
        if item["dataset"] in request["literal_eval"]:
            sys.modules[type(fn.__self__).__module__].eval = ast.literal_eval
        out = {"score": float(fn(item["answer"], item["entry"]))}
    except BaseException as e:
        out = {"status": "unparsed", "reason": repr(e)[:200]}
    os.write(w, json.dumps(out).encode())
    os._exit(0)


for i, item in enumerate(request["items"]):
    if time.monotonic() - START + request["timeout"] > request["budget"]:
        break
    name = item["dataset"]
    if name not in scorers:
        try:
            scorers[name] = reasoning_gym.get_score_answer_fn(name)
        except Exception as e:
            emit({"i": i, "status": "error", "reason": f"{type(e).__name__}: {e}"})
            continue
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        child(item, w)
    os.close(w)
    data, deadline, timed_out = b"", time.monotonic() + request["timeout"], False
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            timed_out = True
            break
        chunk = os.read(r, 1 << 16)
        if not chunk or len(data) > 1 << 16:
            break
        data += chunk
    os.close(r)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    if timed_out:
        emit({"i": i, "status": "timeout", "reason": f"over {request['timeout']} s"})
        continue
    try:
        out = json.loads(data)
        if "score" in out:
            out = {"score": float(out["score"])}
        else:
            out = {"status": "unparsed", "reason": str(out["reason"])}
    except Exception:
        out = {"status": "unparsed", "reason": "the scorer's process ended without a score"}
    emit({**out, "i": i})
emit({"done": True})
"""
