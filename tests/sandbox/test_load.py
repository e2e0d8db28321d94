"""Load: many concurrent clients, a third of them hostile, against ``sandbox serve --workers 2``.

Every verdict must be right and the server's memory must stay flat. The default is a quick
run; ``REASONRL_SANDBOX_LOAD=500`` gives the full one (500 requests from 32 clients), and
``pytest -s`` prints the latency percentiles.
"""

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reasonrl.sandbox import AssertTests, EvaluateRequest, SandboxClient

REQUESTS = int(os.environ.get("REASONRL_SANDBOX_LOAD", "48"))
CLIENTS = 32

CHECK = "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n"
KINDS = {  # kind → (solution, expected verdict)
    "right": ("def f(x):\n    return x * x\n", "passed"),
    "wrong": ("def f(x):\n    return x + x\n", "failed"),
    "exit0": ("import sys\nsys.exit(0)\n", "failed"),
    "eq_true": ("class A:\n    __eq__ = lambda s, o: True\ndef f(x):\n    return A()\n", "failed"),
    "forged": ("print('PASSED')\ndef f(x):\n    print('PASSED')\n    return 0\n", "failed"),
    "loop": ("def f(x):\n    while True:\n        pass\n", "timeout"),
    "fork_bomb": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "timeout",
    ),
    "memory": (
        "def f(x):\n    return len(bytearray(8 << 30))\n",
        "failed",
    ),
    "stdout": ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", "failed"),
}
HOSTILE = [k for k in KINDS if k not in ("right", "wrong")]


def _schedule(n: int) -> list[str]:
    """Two honest requests (alternately right and wrong) for every hostile one."""
    kinds = []
    for i in range(n):
        if i % 3 == 2:
            kinds.append(HOSTILE[(i // 3) % len(HOSTILE)])
        else:
            kinds.append("right" if (i // 3) % 2 == 0 else "wrong")
    return kinds


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_concurrent_mixed_load_gives_right_verdicts_with_flat_memory(spawn_server):
    proc, url = spawn_server("--workers", "2")
    client = SandboxClient(url, retries=8, backoff_s=0.2)
    kinds = _schedule(REQUESTS)
    rss: list[float] = []

    def one(kind: str) -> tuple[str, str, float]:
        tests = AssertTests(kind="asserts", test_code=CHECK, entry_point="f")
        request = EvaluateRequest(code=KINDS[kind][0], tests=tests, timeout=3.0)
        start = time.monotonic()
        verdict = client.evaluate(request)
        rss.append(_rss_mb(proc.pid))
        return kind, verdict.status, time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as ex:
        results = list(ex.map(one, kinds))
    elapsed = time.monotonic() - start
    wrong = [(kind, got) for kind, got, _ in results if got != KINDS[kind][1]]
    assert not wrong
    latencies = sorted(s for _, _, s in results)
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    print(
        f"\n{REQUESTS} requests, {CLIENTS} clients: {REQUESTS / elapsed:.1f} req/s, "
        f"p50 {p50:.2f} s, p99 {p99:.2f} s, server RSS {rss[0]:.0f} → {max(rss):.0f} MB"
    )
    warm = rss[len(rss) // 4]
    assert max(rss[len(rss) // 4 :]) - warm < 64  # flat: no growth with the request count
