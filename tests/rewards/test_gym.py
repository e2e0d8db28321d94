"""The ``reasoning_gym`` verifier: decisions made here, then scoring in the sandbox jail."""

import time
import uuid
from pathlib import Path

import pytest
import reasoning_gym

import reasonrl.rewards.gym as gym
import reasonrl.sandbox as sandbox
from reasonrl.rewards import get_verifier
from reasonrl.rewards.gym import ReasoningGymVerifier
from reasonrl.sandbox import isolation_problem
from reasonrl.tasks import Sample

S = Sample("What is 2 + 3?", "5", {"source_dataset": "chain_sum"})


def _sample(dataset: str, seed: int = 1) -> Sample:
    entry = reasoning_gym.create_dataset(dataset, size=1, seed=seed)[0]
    return Sample(entry["question"], entry["answer"], {**entry["metadata"]})


def _pwned(path: Path, tail: str) -> str:
    return f"<answer>__import__('os').system('echo PWNED > {path}') or {tail}</answer>"


TAMPER = (
    "<answer>__import__('sympy').__dict__.update("
    "simplify=__import__('sympy').Integer(0).__mul__) or x</answer>"
)

# --------------------------------------------------------------- decided without the sandbox


def test_game_of_life_halting_is_a_strict_match():
    # the library scores bool(answer) == bool(gold), and bool("False") is True
    v = ReasoningGymVerifier()
    gold_false = Sample("q", "False", {"source_dataset": "game_of_life_halting"})
    gold_true = Sample("q", "True", {"source_dataset": "game_of_life_halting"})
    cases = [
        ("<answer>banana</answer>", gold_false, 0.0),
        ("<answer>True</answer>", gold_false, 0.0),
        ("<answer>False</answer>", gold_false, 1.0),
        ("<answer> false </answer>", gold_false, 1.0),
        ("<answer>banana</answer>", gold_true, 0.0),
        ("<answer>True</answer>", gold_true, 1.0),
    ]
    for completion, sample, score in cases:
        assert v(completion, sample).score == score, (completion, sample.answer)


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("x**3/3 + 2*sin(x) + C", True),
        ("-4*(-2*x - 8)**(3/2)/3 + C", True),
        ("(75 - 3) * 2 + 100", True),
        ("x^2 + 1.5e3 + abs(x)", True),
        ("__import__('os').system('id') or x", False),
        ("eval(chr(95) * 2)", False),
        ("sympify('x')", False),  # a string
        ("x.diff(x)", False),  # an attribute
        ("[x][0]", False),
        ("(lambda: 0)()", False),
        ("f(x, evaluate=False)", False),
        ("x!", False),  # not Python
        ("(" * 50 + "x" + ")" * 50, True),
        ("(" * 5000 + "x" + ")" * 5000, False),
    ],
)
def test_sympy_parsed_answers_must_be_plain_expressions(text, plain):
    assert gym._plain_expression(text) is plain


def test_code_for_a_sympy_scorer_is_unparsed_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    sample = _sample("intermediate_integration")
    for completion in (_pwned(marker, sample.answer), TAMPER):
        result = ReasoningGymVerifier()(completion, sample)
        assert (result.score, result.status) == (0.0, "unparsed")
    assert not marker.exists()


def test_dataset_comes_from_the_option_or_the_sample():
    bare = Sample("q", "5")
    result = ReasoningGymVerifier()("<answer>5</answer>", bare)
    assert (result.score, result.status) == (None, "error")
    strict = ReasoningGymVerifier(dataset="game_of_life_halting")
    assert strict("<answer>5</answer>", bare).score == 1.0


def test_no_answer_tag_is_unparsed():
    assert ReasoningGymVerifier()("5", S).status == "unparsed"


def test_no_sandbox_is_none_not_zero(monkeypatch):
    # sandbox_executor asks reasonrl.sandbox whether jails can be built here
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "no namespaces on this machine")
    result = ReasoningGymVerifier()("<answer>5</answer>", S)
    assert (result.score, result.status) == (None, "error")
    assert "no namespaces" in result.details["reason"]


def test_the_registry_builds_it_with_its_options():
    verifier = get_verifier("reasoning_gym", partial=True)
    assert isinstance(verifier, ReasoningGymVerifier) and verifier.partial


# ------------------------------------------------------------------------ in the sandbox jail

needs_jail = pytest.mark.skipif(
    isolation_problem() is not None, reason=f"sandbox unavailable: {isolation_problem()}"
)


@pytest.fixture(scope="module")
def jail_batch():
    """One sandbox batch for most tests: (results by case name, seconds it took)."""
    integration = _sample("intermediate_integration")
    countdown = _sample("countdown")
    cases = {
        "chain_sum": ("<answer>5</answer>", S),
        "chain_sum_substring": ("<answer>15</answer>", S),
        "chain_sum_wrong": ("<answer>6</answer>", S),
        "basic_arithmetic": (f"<answer>{(b := _sample('basic_arithmetic')).answer}</answer>", b),
        "integration_gold": (f"<answer>{integration.answer}</answer>", integration),
        "integration_wrong": ("<answer>x</answer>", integration),
        "countdown_hang": ("<answer>9**9**9</answer>", countdown),
        "n_queens_code": ("<answer>__import__('os').getpid()</answer>", _sample("n_queens")),
        "unknown_dataset": ("<answer>5</answer>", Sample("q", "5", {"source_dataset": "nope"})),
    }
    verifier = ReasoningGymVerifier(timeout=2.0)
    start = time.monotonic()
    results = verifier.batch([c for c, _ in cases.values()], [s for _, s in cases.values()])
    return dict(zip(cases, results, strict=True)), time.monotonic() - start


@needs_jail
@pytest.mark.parametrize(
    ("case", "score", "status"),
    [
        ("chain_sum", 1.0, "ok"),
        ("chain_sum_substring", 0.0, "wrong"),  # reasoning-gym itself would give 0.5
        ("chain_sum_wrong", 0.0, "wrong"),
        ("basic_arithmetic", 1.0, "ok"),
        ("integration_gold", 1.0, "ok"),
        ("integration_wrong", 0.0, "wrong"),
        ("countdown_hang", 0.0, "timeout"),  # cut at the deadline, the answer's fault
        ("n_queens_code", 0.0, "wrong"),  # its eval is literal_eval: code does not run
        ("unknown_dataset", None, "error"),
    ],
)
def test_scores_in_the_jail(jail_batch, case, score, status):
    results, _ = jail_batch
    assert (results[case].score, results[case].status) == (score, status)


@needs_jail
def test_a_hanging_answer_costs_only_its_deadline(jail_batch):
    results, seconds = jail_batch
    assert seconds < 15  # the jail, importing reasoning_gym, 2 s for the hang, the rest


@needs_jail
def test_partial_credit_when_asked():
    results = ReasoningGymVerifier(partial=True).batch(
        ["<answer>15</answer>", "<answer>6</answer>"], [S, S]
    )
    assert [(r.score, r.status) for r in results] == [(0.5, "wrong"), (0.0, "wrong")]


@needs_jail
def test_code_past_the_checks_stays_in_its_child_and_its_jail():
    # The ast check stops these answers before the sandbox; sent raw, the jail and the
    # per-answer child still keep them from the host and from the other answers.
    sample = _sample("intermediate_integration")
    entry = {"question": sample.prompt, "answer": sample.answer, "metadata": sample.meta}
    marker = Path("/tmp") / f"reasonrl-gym-pwned-{uuid.uuid4().hex}"
    answers = [
        TAMPER.removeprefix("<answer>").removesuffix("</answer>"),
        "x",
        _pwned(marker, "x").removeprefix("<answer>").removesuffix("</answer>"),
        "print('0' * 32, '{\"i\": 3, \"score\": 1.0}') or x",  # a forged result line
        "x",
    ]
    items = [{"dataset": "intermediate_integration", "answer": a, "entry": entry} for a in answers]
    verifier = ReasoningGymVerifier()
    verifier.executor = gym.Sandbox()
    got, finished = verifier._run_once(items)
    if finished != True:  # noqa: E712 (a string says why the run failed)
        pytest.skip(f"the sandbox jail has no reasoning_gym: {finished}")
    assert got[0]["score"] == 1.0  # it rigged its own score (hence the ast check) ...
    assert got[1]["score"] == 0.0  # ... and no one else's
    assert got[4]["score"] == 0.0
    assert got[3]["score"] == 0.0
    assert not marker.exists()
