"""The ``code`` verifier: extraction, verdict → score, and the sandbox being down → None."""

import threading
import time

import pytest
import uvicorn

from reasonrl.rewards.code import CodeVerifier
from reasonrl.sandbox import Sandbox, isolation_problem
from reasonrl.sandbox.server import create_app
from reasonrl.tasks import Sample

pytestmark = pytest.mark.skipif(
    isolation_problem() is not None, reason=f"sandbox unavailable: {isolation_problem()}"
)

SQUARE = Sample(
    "def square(x):\n    '''x squared'''\n",
    "",
    {
        "code_prefix": "def square(x):\n    '''x squared'''\n",
        "tests": {
            "kind": "asserts",
            "test_code": "def check(candidate):\n    assert candidate(3) == 9\n",
            "entry_point": "square",
        },
    },
)
ECHO_SUM = Sample(
    "Read two integers, print their sum.",
    "",
    {
        "tests": {
            "kind": "io",
            "cases": [
                {"stdin": "1 2", "expected_stdout": "3"},
                {"stdin": "2 2", "expected_stdout": "4"},
            ],
        }
    },
)


@pytest.fixture(scope="module")
def local() -> CodeVerifier:
    return CodeVerifier(timeout=2.0)


@pytest.mark.parametrize(
    ("completion", "score", "status"),
    [
        ("<think>easy</think>\n```python\ndef square(x):\n    return x * x\n```", 1.0, "ok"),
        ("```python\n    return x ** 2\n```", 1.0, "ok"),  # only the body, after the prompt
        ("```python\ndef square(x):\n    return x + x\n```", 0.0, "wrong"),
        ("```python\nimport sys\nsys.exit(0)\n```", 0.0, "wrong"),
        ("```bash\nrm -rf /\n```", 0.0, "unparsed"),
        ("the answer is x * x", 0.0, "unparsed"),
    ],
)
def test_asserts_completions(local, completion, score, status):
    result = local(completion, SQUARE)
    assert (result.score, result.status) == (score, status)


def test_a_program_that_runs_out_of_time_scores_zero_not_none(local):
    result = local("```python\ndef square(x):\n    while True:\n        pass\n```", SQUARE)
    assert (result.score, result.status) == (0.0, "wrong")
    assert result.details["verdict"] == "timeout"


def test_io_tests_and_partial_credit():
    half = "```python\na, b = map(int, input().split())\nprint(3)\n```"
    assert CodeVerifier()(half, ECHO_SUM).score == 0.0
    assert CodeVerifier(partial=True)(half, ECHO_SUM).score == 0.5


def test_raw_mode_uses_the_whole_completion():
    raw = CodeVerifier(extract="raw")
    assert raw("    return x * x\n", SQUARE).score == 1.0


def test_a_sample_without_tests_is_an_error(local):
    result = local("```python\nprint(1)\n```", Sample("q", "a"))
    assert (result.score, result.status) == (None, "error")


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    app = create_app(Sandbox(base_dir=tmp_path_factory.mktemp("jails")), 2, 16, None)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join()


def test_through_the_server(server_url):
    remote = CodeVerifier(url=server_url)
    completions = [
        "```python\ndef square(x):\n    return x * x\n```",
        "```python\nsquare = abs\n```",
    ]
    assert [r.score for r in remote.batch(completions, [SQUARE, SQUARE])] == [1.0, 0.0]


def test_sandbox_down_is_none_never_zero():
    down = CodeVerifier(url="http://127.0.0.1:9")
    down.executor.retries, down.executor.backoff_s = 1, 0.01
    result = down("```python\ndef square(x):\n    return x * x\n```", SQUARE)
    assert (result.score, result.status) == (None, "error")


def _humaneval(task_id: str) -> Sample:
    from reasonrl.tasks.humaneval import humaneval_samples

    return next(s for s in humaneval_samples() if s.meta["task_id"] == task_id)


@pytest.mark.parametrize(
    ("task_id", "cheat"),
    [
        (
            "HumanEval/38",
            "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s",
        ),
        (
            "HumanEval/50",
            "def encode_shift(s):\n    return s\n\ndef decode_shift(s):\n    return s",
        ),
        ("HumanEval/32", "def poly(xs, x):\n    return 0\n\ndef find_zero(xs):\n    return 0.0"),
    ],
)
def test_redefining_the_prompts_helpers_does_not_pass(local, task_id, cheat):
    # the tests check decode(encode(s)) == s, or poly(xs, find_zero(xs)) ~ 0: with the helpers
    # made trivial by the completion, any answer would pass
    sample = _humaneval(task_id)
    assert local(f"```python\n{cheat}\n```", sample).score == 0.0
    body = sample.answer[len(sample.prompt) :]  # the canonical solution still passes
    assert local(f"```python\n{body}\n```", sample).score == 1.0
