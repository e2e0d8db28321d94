"""Token sampling against its oracles: hand-worked distributions and transformers' warpers
(allowed tokens, frequencies), a scalar re-implementation of the seeded hash, and a chi-square
test of seeded draws from the bundled model's logits."""

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from reasonrl.config import ModelConfig
from reasonrl.models import load_model, load_tokenizer
from reasonrl.rollout import FastEngine
from reasonrl.rollout.sampling import (
    MASK32,
    completion_seeds,
    eval_seeds,
    hash_bits,
    sample_tokens,
    seed_tensor,
)
from reasonrl.tasks import Sample, render_prompt


def _draws(logits, n, seeded, **kw):
    """n draws from one row of logits: from the global RNG, or from seeds 0..n-1."""
    torch.manual_seed(0)
    seeds = torch.arange(n) if seeded else None
    return sample_tokens(logits.expand(n, -1), seeds=seeds, **kw)


PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize(
    ("top_p", "top_k", "expected"),
    [
        (1.0, 0, [0.5, 0.3, 0.15, 0.05]),
        (0.75, 0, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),  # 0.5 + 0.3 is the smallest prefix ≥ 0.75
        (1.0, 3, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),
        # top-p runs on the top-k tokens renormalised: 0.5/0.95 = 0.526 ≥ 0.52 already
        (0.52, 3, [1, 0, 0, 0]),
        (0.52, 0, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),  # without top-k, 0.5 < 0.52 needs token 1
    ],
)
def test_sampling_draws_only_allowed_tokens_in_proportion(top_p, top_k, expected, seeded):
    n = 20_000
    ids, logp = _draws(PROBS.log().unsqueeze(0), n, seeded, top_p=top_p, top_k=top_k)
    freq = torch.bincount(ids, minlength=4).float() / n
    allowed = torch.tensor(expected) > 0
    assert (freq[~allowed] == 0).all()
    torch.testing.assert_close(
        freq, torch.tensor(expected, dtype=torch.float32), atol=0.015, rtol=0
    )
    # the log-prob is the unfiltered distribution's
    torch.testing.assert_close(logp, PROBS.log()[ids])


@pytest.mark.parametrize("seeded", [False, True])
def test_temperature_scales_the_distribution_and_its_logprobs(seeded):
    n = 20_000
    ids, logp = _draws(PROBS.log().unsqueeze(0), n, seeded, temperature=0.5)
    sharp = PROBS**2 / (PROBS**2).sum()
    freq = torch.bincount(ids, minlength=4).float() / n
    torch.testing.assert_close(freq, sharp, atol=0.015, rtol=0)
    torch.testing.assert_close(logp, sharp.log()[ids])


def test_greedy_takes_the_argmax_scored_at_temperature_one():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, -1.0, 3.5]])
    for seeds in (None, torch.tensor([5, 6])):  # greedy ignores seeds
        ids, logp = sample_tokens(logits, temperature=0.3, top_p=0.5, greedy=True, seeds=seeds)
        assert ids.tolist() == [1, 2]
        torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[[0, 1], [1, 2]])


@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize(("top_p", "top_k"), [(0.9, 0), (1.0, 7), (0.6, 12)])
def test_sampling_stays_inside_transformers_warpers(top_p, top_k, seeded):
    torch.manual_seed(1)
    logits = torch.randn(16, 50) * 2
    warped = logits / 0.8
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    warped = TopPLogitsWarper(top_p)(None, warped)
    allowed = torch.isfinite(warped)
    for i in range(50):
        seeds = torch.arange(16) + 16 * i if seeded else None
        ids, _ = sample_tokens(logits, temperature=0.8, top_p=top_p, top_k=top_k, seeds=seeds)
        assert allowed[torch.arange(16), ids].all()


def _mix32_scalar(x):
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & MASK32
    x ^= x >> 15
    x = (x * 0x735A2D97) & MASK32
    return x ^ (x >> 15)


def _hash_scalar(seed, position, v):
    """The loop oracle: one (seed, position, vocab index) at a time, in Python integers."""
    seed &= 2**64 - 1
    hi, lo = seed >> 32, seed & MASK32
    for key in (0x243F6A88, 0x85A308D3):
        hi, lo = lo, hi ^ _mix32_scalar(lo ^ position ^ key)
    lo ^= v
    hi ^= _mix32_scalar(lo)
    return lo ^ _mix32_scalar(hi)


def test_hash_bits_equal_a_scalar_oracle():
    seeds = [0, 1, 12345, 2**32 + 7, 2**63 - 1, -1, -(2**40)]
    vocab = torch.tensor([0, 1, 2, 347, 151_935, 2**20 + 3])
    for position in (0, 1, 999):
        bits = hash_bits(seed_tensor(seeds, len(seeds), "cpu"), position, vocab)
        expected = [[_hash_scalar(s, position, int(v)) for v in vocab] for s in seeds]
        assert bits.tolist() == expected
    assert _hash_scalar(0, 0, 0) != _hash_scalar(0, 0, 1) != _hash_scalar(0, 1, 1)


def test_seeds_wrap_to_64_bits_and_must_match_the_prompts():
    assert seed_tensor([-1, 2**64 + 3, 2**63], 3, "cpu").tolist() == [-1, 3, -(2**63)]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        seed_tensor([1, 2], 3, "cpu")


def test_seeded_draws_depend_only_on_seed_position_and_logits():
    torch.manual_seed(0)
    logits = torch.randn(12, 40)
    seeds = torch.arange(100, 112)
    kw = {"temperature": 0.9, "top_p": 0.95, "top_k": 30}
    rng = torch.get_rng_state()
    ids, logp = sample_tokens(logits, seeds=seeds, position=5, **kw)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is neither read nor moved
    perm = torch.randperm(12)
    p_ids, p_logp = sample_tokens(logits[perm], seeds=seeds[perm], position=5, **kw)
    assert torch.equal(p_ids, ids[perm]) and torch.equal(p_logp, logp[perm])
    for rows in (slice(0, 1), slice(3, 9)):  # alone, or beside other rows
        assert torch.equal(
            sample_tokens(logits[rows], seeds=seeds[rows], position=5, **kw)[0], ids[rows]
        )
    # another seed or another position is another draw
    assert not torch.equal(sample_tokens(logits, seeds=seeds + 12, position=5, **kw)[0], ids)
    assert not torch.equal(sample_tokens(logits, seeds=seeds, position=6, **kw)[0], ids)


def _chi_square_p(counts, probs, n):
    """p-value of observed counts against probs (cells with an expected count under 5 pooled)."""
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)])
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2), stat / 2))


@pytest.fixture(scope="module")
def bundled():
    return load_model(ModelConfig(path="bundled", device="cpu")), load_tokenizer("bundled")


def _uncertain_prompt(tok):
    """A prompt ending in ``<think>``: the bundled model's next token is spread (at temperature
    1 it is '1' or '~', others well below 1e-3; hotter, many tokens get a share)."""
    q = "State the final answer to the following arithmetic problem: 12 + 34 - 5 ="
    return render_prompt(Sample(q, "0"), tok) + "<think>"


@pytest.fixture(scope="module")
def uncertain_logits(bundled):
    model, tok = bundled
    enc = tok(_uncertain_prompt(tok), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**enc).logits[0, -1]


def _warped_probs(logits, temperature, top_p, top_k):
    """softmax of transformers' warpers applied to logits [V] → [V] float64."""
    warped = TemperatureLogitsWarper(temperature)(None, logits.unsqueeze(0))
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    if top_p < 1.0:
        warped = TopPLogitsWarper(top_p)(None, warped)
    return warped.softmax(-1)[0].double()


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k"), [(2.5, 1.0, 0), (3.0, 0.8, 0), (2.0, 1.0, 8), (3.0, 0.9, 20)]
)
@pytest.mark.parametrize("across", ["seeds", "positions"])
def test_seeded_frequencies_match_the_warped_softmax(
    uncertain_logits, temperature, top_p, top_k, across
):
    # n draws of one row of logits: n seeds at one position, or one seed at n positions.
    n = 20_000
    logits = uncertain_logits.unsqueeze(0)
    probs = _warped_probs(uncertain_logits, temperature, top_p, top_k)
    seeds = torch.arange(n) if across == "seeds" else torch.full((n,), 7)
    position = 3 if across == "seeds" else torch.arange(n)
    ids, _ = sample_tokens(
        logits.expand(n, -1), temperature, top_p, top_k, seeds=seeds, position=position
    )
    counts = torch.bincount(ids, minlength=probs.numel()).double()
    assert (counts[probs == 0] == 0).all()
    assert int((probs * n >= 5).sum()) >= 6  # enough cells for the test to mean something
    assert _chi_square_p(counts, probs, n) > 1e-3


def test_the_fast_engine_draws_first_tokens_from_the_warped_softmax(bundled, uncertain_logits):
    # The same count through the engine: n rows of one prompt (one group, prefilled once),
    # one token each, seeds 0..n-1.
    model, tok = bundled
    n, temperature, top_p, top_k = 4000, 3.0, 0.95, 20
    ro = FastEngine(model, tok, batch_completions=n).generate(
        [_uncertain_prompt(tok)] * n,
        max_new_tokens=1,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seeds=range(n),
    )
    probs = _warped_probs(uncertain_logits, temperature, top_p, top_k)
    counts = torch.bincount(ro.completion_ids[:, 0], minlength=probs.numel()).double()
    assert (counts[probs == 0] == 0).all() and (counts > 0).sum() >= 5
    assert _chi_square_p(counts, probs, n) > 1e-3


def test_completion_seeds_depend_on_the_prompt_not_on_its_row():
    seeds = completion_seeds(7, 3, [5, 9, 2], group=4)
    assert len(seeds) == 12 and len(set(seeds)) == 12
    assert all(0 <= s < 2**63 for s in seeds)
    # a rank given prompts 9 and 2 (in any order) computes the same seeds for them
    assert completion_seeds(7, 3, [2, 9], group=4) == seeds[8:] + seeds[4:8]
    assert completion_seeds(7, 3, [9], group=4) == seeds[4:8]
    # a group of 2 is the first 2 of a group of 4
    assert completion_seeds(7, 3, [5], group=2) == seeds[:2]


def test_completion_seeds_change_with_seed_step_round_and_repeats():
    base = completion_seeds(7, 3, [5], group=2)
    others = [
        completion_seeds(8, 3, [5], group=2),
        completion_seeds(7, 4, [5], group=2),
        completion_seeds(7, 3, [6], group=2),
        completion_seeds(7, 3, [5], group=2, sampling_round=1),
    ]
    assert all(not set(base) & set(o) for o in others)
    # the same index twice in a step: the second group is fresh, the first unchanged
    twice = completion_seeds(7, 3, [5, 1, 5], group=2)
    assert twice[:2] == base and not set(twice[4:]) & set(base)


def test_eval_seeds_are_per_problem_and_sample():
    seeds = eval_seeds(1, [0, 1, 2], k=3)
    assert len(set(seeds)) == 9
    assert eval_seeds(1, [2], k=3) == seeds[6:]
    assert eval_seeds(1, [0], k=2) == seeds[:2]
    assert not set(eval_seeds(2, [0, 1, 2], k=3)) & set(seeds)
    assert not set(completion_seeds(1, 0, [0, 1, 2], group=3)) & set(seeds)
