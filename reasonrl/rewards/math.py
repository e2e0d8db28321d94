"""``math``: symbolic equivalence with math-verify, in worker processes killed at a deadline.

The answer is the single <answer> tag, else the last ``\\boxed{}``; longer than ``max_chars``
is ``unparsed``. math-verify (sympy) evaluates what it parses and some inputs never finish
(``\\dfrac{5^{5^{5^{5^5}}}}{3}``) even under its own ``signal.alarm`` timeouts, so it runs in a
pool of worker processes: a comparison that outlives ``timeout`` seconds of wall clock kills its
worker (a fresh one replaces it) and scores 0 with status ``timeout``. The answer made the
checker run past its deadline, as a program past its time limit fails its tests: were it None
(masked out of the group's statistics), an answer built to be unevaluable would escape the
negative advantage a wrong one gets, and take its format and penalty terms with it. A worker
that fails (``error``) is the checker's fault and scores None.
"""

from __future__ import annotations

import json
import os
import queue
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reasonrl.rewards.base import RewardResult
from reasonrl.rewards.extract import math_answer
from reasonrl.tasks.base import Sample

_WORKER_SCRIPT = str(Path(__file__).with_name("_math_worker.py"))
_STARTUP_S = 120.0  # importing sympy on a busy machine; not counted against any deadline


class _Worker:
    """One ``_math_worker.py`` process; its replies are JSON lines on its stdout."""

    def __init__(self, memory_mb: int) -> None:
        # -P: the script's directory (which holds this math.py) must not shadow the stdlib.
        self.proc = subprocess.Popen(
            [sys.executable, "-P", _WORKER_SCRIPT, str(memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.ready = False
        self._buffer = b""

    def _line(self, timeout: float) -> list[str] | None:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise EOFError("the worker exited")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def ask(self, gold: str, answer: str, timeout: float) -> tuple[str, str]:
        """(status, detail); ("timeout", …) when no reply came within ``timeout`` seconds."""
        if not self.ready:
            if self._line(_STARTUP_S) is None:
                raise EOFError("the worker did not start")
            self.ready = True
        self.proc.stdin.write((json.dumps([gold, answer]) + "\n").encode())
        self.proc.stdin.flush()
        reply = self._line(timeout)
        return ("timeout", f"no verdict within {timeout} s") if reply is None else tuple(reply)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


class WorkerPool:
    """``size`` math-verify processes. Thread-safe: a call takes an idle worker or waits for
    one; a worker that timed out or died is killed and replaced by a fresh one."""

    def __init__(self, size: int, memory_mb: int) -> None:
        self.memory_mb = memory_mb
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for _ in range(size):
            self._idle.put(_Worker(memory_mb))

    def compare(self, gold: str, answer: str, timeout: float) -> tuple[str, str]:
        """(status, detail): ok | wrong | unparsed from math-verify, or timeout | error."""
        worker = self._idle.get()
        try:
            result = worker.ask(gold, answer, timeout)
        except (EOFError, OSError, ValueError) as e:
            result = ("error", f"the worker failed: {e}")
        if result[0] in ("timeout", "error"):
            worker.kill()
            worker = _Worker(self.memory_mb)
        self._idle.put(worker)
        return result


_POOLS: dict[tuple[int, int], WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(size: int, memory_mb: int) -> WorkerPool:
    """One pool per (size, memory_mb) per process, started on first use."""
    with _POOLS_LOCK:
        if (size, memory_mb) not in _POOLS:
            _POOLS[size, memory_mb] = WorkerPool(size, memory_mb)
        return _POOLS[size, memory_mb]


class MathVerifier:
    """1 if the answer is mathematically equivalent to ``sample.answer`` (fractions, decimals,
    percentages, sets, intervals, LaTeX variants, ``x=3`` for 3), else 0.

    ``timeout``: wall-clock seconds per comparison; ``workers``: processes (and the
    concurrency of :meth:`batch`); ``max_chars``: longest answer looked at;
    ``memory_mb``: address-space limit of each worker.
    """

    def __init__(
        self, timeout: float = 5.0, workers: int = 2, max_chars: int = 1000, memory_mb: int = 2048
    ) -> None:
        self.timeout, self.workers, self.max_chars = timeout, workers, max_chars
        self.pool = shared_pool(workers, memory_mb)

    def __call__(self, completion: str, sample: Sample) -> RewardResult:
        answer = math_answer(completion)
        if answer is None or not answer or len(answer) > self.max_chars:
            return RewardResult(0.0, "unparsed", {"answer": answer and answer[:200]})
        status, detail = self.pool.compare(sample.answer, answer, self.timeout)
        details = {"answer": answer[:200], "detail": detail}
        if status == "error":
            return RewardResult(None, status, details)
        return RewardResult(1.0 if status == "ok" else 0.0, status, details)

    def batch(self, completions: Sequence[str], samples: Sequence[Sample]) -> list[RewardResult]:
        """``[self(c, s) for c, s in zip(...)]``, ``workers`` at a time."""
        with ThreadPoolExecutor(self.workers) as ex:
            return list(ex.map(self, completions, samples))
