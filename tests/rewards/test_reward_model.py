"""The reward_model verifier, on a reward model saved by reasonrl itself."""

import math
import random
import statistics

import pytest
import torch

from reasonrl.config import ConfigError
from reasonrl.models import load_tokenizer
from reasonrl.models.reward import load_reward_model, pad_left
from reasonrl.rewards import get_verifier, score_batch
from reasonrl.rewards.reward_model import RunningMoments
from reasonrl.tasks import Sample, render_prompt

SAMPLES = [Sample(f"State the final answer: {a} + {b} =", str(a + b)) for a, b in [(3, 4), (12, 9)]]
COMPLETIONS = [
    "<think>3+4=7</think> <answer>7</answer>",
    "<think>12+9=21</think> <answer>21</answer>",
    "<answer>8</answer>",
    "<think>12+9=20</think> <answer>20</answer>",
    "no tags at all",
]
PAIRED = [SAMPLES[i % 2] for i in range(len(COMPLETIONS))]


@pytest.fixture(scope="module", params=["last", "mean"])
def rm_dir(tmp_path_factory, request):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rm") / "model"
    rm = load_reward_model("bundled", head="value", device="cpu", pool=request.param)
    torch.nn.init.normal_(rm.model.head.weight)  # a new head is all zeros: make scores differ
    rm.save_pretrained(path)
    load_tokenizer("bundled").save_pretrained(path)
    return str(path)


def _direct_scores(path, completions, samples):
    tok = load_tokenizer(path)
    rm = load_reward_model(path, device="cpu").eval()
    prompts = tok([render_prompt(s, tok) for s in samples], add_special_tokens=False)["input_ids"]
    outs = tok(list(completions), add_special_tokens=False)["input_ids"]
    responses = [o + [tok.eos_token_id] for o in outs]
    ids, mask = pad_left(prompts, responses, tok.pad_token_id)
    with torch.no_grad():
        return rm(ids, mask, torch.tensor([len(r) for r in responses])).tolist()


def test_raw_scores_match_the_model_in_any_batch_size(rm_dir):
    expected = _direct_scores(rm_dir, COMPLETIONS, PAIRED)
    assert len(set(expected)) == len(expected)
    verifier = get_verifier("reward_model", path=rm_dir, normalize="none", batch_size=2)
    results = verifier.batch(COMPLETIONS, PAIRED)
    assert [r.status for r in results] == ["ok"] * 5
    assert [r.score for r in results] == pytest.approx(expected, abs=1e-5)
    assert [r.details["raw_score"] for r in results] == pytest.approx(expected, abs=1e-5)
    one = verifier(COMPLETIONS[3], PAIRED[3])
    assert one.score == pytest.approx(expected[3], abs=1e-5)


def test_running_normalisation_uses_every_score_seen(rm_dir):
    verifier = get_verifier("reward_model", path=rm_dir, normalize="running", batch_size=4)
    first = verifier.batch(COMPLETIONS[:2], PAIRED[:2])
    raw_first = [r.details["raw_score"] for r in first]
    # two scores: mean in the middle, population std half the gap → exactly −1 and +1
    assert sorted(r.score for r in first) == pytest.approx([-1.0, 1.0], abs=1e-5)
    second = verifier.batch(COMPLETIONS[2:], PAIRED[2:])
    seen = raw_first + [r.details["raw_score"] for r in second]
    mean, std = statistics.fmean(seen), statistics.pstdev(seen)
    assert [r.score for r in second] == pytest.approx(
        [(r.details["raw_score"] - mean) / std for r in second], abs=1e-5
    )
    lone = get_verifier("reward_model", path=rm_dir)(COMPLETIONS[0], PAIRED[0])
    assert lone.score == 0.0  # one score has no spread: centred, not divided by zero


def test_fixed_normalisation_and_bad_options(rm_dir):
    verifier = get_verifier("reward_model", path=rm_dir, normalize="fixed", mean=0.5, std=2.0)
    (result,) = verifier.batch(COMPLETIONS[:1], PAIRED[:1])
    assert result.score == pytest.approx((result.details["raw_score"] - 0.5) / 2.0)
    with pytest.raises(ConfigError, match="normalize"):
        get_verifier("reward_model", path=rm_dir, normalize="zscore")
    with pytest.raises(ConfigError, match="missing a required argument: 'path'"):
        get_verifier("reward_model")


def test_long_inputs_keep_the_end_of_the_prompt(rm_dir):
    tok = load_tokenizer(rm_dir)
    verifier = get_verifier("reward_model", path=rm_dir, normalize="none", max_length=16)
    (result,) = verifier.batch(COMPLETIONS[:1], PAIRED[:1])
    prompt = tok(render_prompt(PAIRED[0], tok), add_special_tokens=False)["input_ids"]
    out = tok(COMPLETIONS[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rm = load_reward_model(rm_dir, device="cpu").eval()
    with torch.no_grad():
        ids, mask = pad_left([prompt[-(16 - len(out)) :]], [out], tok.pad_token_id)
        cut = rm(ids, mask, torch.tensor([len(out)])).item()
    assert len(out) < 16 and result.score == pytest.approx(cut, abs=1e-5)


def test_mixes_with_verifiers_in_a_recipe(rm_dir):
    rewards = {
        "answer": 1.0,
        "rm": {"weight": 0.5, "verifier": "reward_model", "options": {"path": rm_dir}},
    }
    scored = score_batch(COMPLETIONS, PAIRED, rewards)
    assert set(scored.components) == {"answer", "rm"}
    for i, total in enumerate(scored.total):
        assert total == pytest.approx(
            scored.components["answer"][i] + 0.5 * scored.components["rm"][i]
        )


def test_welford_matches_the_two_pass_formula():
    rng = random.Random(0)
    values = [rng.gauss(3.0, 2.0) for _ in range(50)]
    moments = RunningMoments()
    moments.update(values[:7])
    moments.update(values[7:])
    assert moments.count == 50
    assert math.isclose(moments.mean, statistics.fmean(values), rel_tol=1e-12)
    assert math.isclose(moments.std, statistics.pstdev(values), rel_tol=1e-9)
