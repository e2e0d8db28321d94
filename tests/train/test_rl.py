"""The RL step's phases on hand-made records, and what a step writes to samples.jsonl."""

import math
from dataclasses import replace

import pytest
import torch

from reasonrl.algos import TIS_MODES, AdvantageInput, get_advantage
from reasonrl.checks import check_config
from reasonrl.config import ConfigError, load_config
from reasonrl.distributed import Ranks
from reasonrl.models import load_model, load_tokenizer
from reasonrl.models.loading import bundled_model_dir
from reasonrl.rollout import Episode, HFEngine, Rollout
from reasonrl.tasks import Sample, render_prompt
from reasonrl.train.collect import collect
from reasonrl.train.records import LogProbs, ScoredBatch
from reasonrl.train.rl import advantages, episode_metrics, mismatch_metrics


def test_sample_records_hold_the_prompt_the_model_saw_and_the_gold_answer_apart():
    cfg = load_config(
        "quickstart",
        [
            "rl.prompts_per_step=2",
            "rl.completions_per_prompt=2",
            "rl.micro_batch_completions=4",
            "rollout.max_new_tokens=3",  # too few to finish: every completion is cut
            "model.device=cpu",
        ],
    )
    tokenizer = load_tokenizer(str(bundled_model_dir()))
    model = load_model(cfg.model, torch.device("cpu"))
    # prompts of different lengths, so the shorter one is left-padded in the batch
    samples = [Sample("1 + 2 =", "3"), Sample("10 + 20 - 5 + 7 =", "32")]
    prompts = [render_prompt(s, tokenizer, cfg.task.prompt, "auto") for s in samples]
    torch.manual_seed(0)
    engine = HFEngine(model, tokenizer)
    batch = collect(cfg, engine, prompts, samples, 0)

    records = batch.sample_records(cfg.log.samples_per_log, tokenizer)

    assert len(records) == 2
    for i, record in enumerate(records):
        row = 2 * i  # one record per group of completions_per_prompt
        sample = batch.samples[row]
        rendered = prompts[samples.index(sample)]
        assert rendered.startswith("<|im_start|>user\n")  # the chat template was applied
        assert record["prompt"] == rendered != sample.prompt
        assert record["gold_answer"] == sample.answer
        assert record["completion"] == batch.rollout.texts[row]
        assert set(record["rewards"]) == {"answer", "format"}
        assert record["rewards"]["answer"] == batch.components["answer"][row]
        assert record["reward"] == batch.rewards.flatten()[row].item()
        prompt_tokens = len(tokenizer(rendered, add_special_tokens=False).input_ids)
        assert record["tokens"] == {"prompt": prompt_tokens, "completion": 3, "environment": 0}
        assert record["truncated"] is True
        assert "answer" not in record  # the answer reward's score no longer reads as the answer


def _scored(rewards: list[list[float]], completion_mask: list[list[int]]) -> ScoredBatch:
    mask = torch.tensor(completion_mask)
    b, c = mask.shape
    rollout = Rollout(
        torch.ones(b, 1, dtype=torch.long),
        torch.ones(b, 1, dtype=torch.long),
        torch.ones(b, c, dtype=torch.long),
        mask,
        torch.zeros(b, c),
        [""] * b,
        torch.ones(b, dtype=torch.bool),
    )
    return ScoredBatch(rollout, [Sample("q", "a")] * b, torch.tensor(rewards), {}, {})


def test_the_kl_penalty_as_a_reward_by_hand():
    # RLOO, β = 0.5, k1 = log π − log π_ref = 0 − (−1) = 1 on every token: sequence rewards
    # 1 − 0.5·2 = 0 and 0 − 0.5·3 = −1.5; leave-one-out: 0 − (−1.5) = 1.5 and −1.5 − 0 = −1.5
    cfg = load_config(None, ["algo.name=rloo", "algo.kl=k1", "algo.beta=0.5"])
    batch = _scored([[1.0, 0.0]], [[1, 1, 0], [1, 1, 1]])
    lp = LogProbs(torch.zeros(2, 3), None, torch.full((2, 3), -1.0), None)
    adv = advantages(batch, lp, cfg.algo, get_advantage(cfg.algo.advantage))
    torch.testing.assert_close(adv.advantages, torch.tensor([[1.5, 1.5, 0], [-1.5, -1.5, -1.5]]))
    torch.testing.assert_close(adv.mask, torch.tensor([[1.0, 1, 0], [1, 1, 1]]))
    assert adv.returns is None


def test_an_uncomputed_reward_takes_a_token_estimators_completion_out_of_the_loss():
    cfg = load_config(None, ["algo.name=reinforce_pp", "algo.beta=0"])
    batch = _scored([[1.0, math.nan]], [[1, 1], [1, 1]])
    lp = LogProbs(torch.zeros(2, 2), None, None, None)
    adv = advantages(batch, lp, cfg.algo, get_advantage(cfg.algo.advantage))
    torch.testing.assert_close(adv.mask, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert torch.isfinite(adv.advantages).all() and not adv.advantages[1].any()


def user_advantage(x: AdvantageInput) -> tuple[torch.Tensor, None]:
    """A recipe's own estimator: the raw reward on every loss token."""
    return x.rewards.reshape(-1, 1) * x.mask, None


def test_a_recipe_names_its_own_estimator_by_import_path():
    cfg = load_config(None, [f"algo.advantage={__name__}:user_advantage"])
    check_config(cfg)  # the path imports
    batch = _scored([[2.0, -1.0]], [[1, 0], [1, 1]])
    lp = LogProbs(torch.zeros(2, 2), None, None, None)
    adv = advantages(batch, lp, cfg.algo, get_advantage(cfg.algo.advantage))
    torch.testing.assert_close(adv.advantages, torch.tensor([[2.0, 0.0], [-1.0, -1.0]]))
    with pytest.raises(ConfigError, match=r"^algo\.advantage: cannot import advantage"):
        check_config(load_config(None, [f"algo.advantage={__name__}:missing"]))


# a step of 2 prompts x 2 completions of up to 6 tokens, in float64
SMALL = [
    "model.dtype=float64",
    "rl.prompts_per_step=2",
    "rl.completions_per_prompt=2",
    "rl.micro_batch_completions=4",
    "rollout.max_new_tokens=6",
]


def _small_batch(cfg) -> tuple[torch.nn.Module, Rollout]:
    """The bundled model and its seeded completions of a SMALL step's two prompts."""
    tokenizer = load_tokenizer(str(bundled_model_dir()))
    model = load_model(cfg.model, torch.device("cpu"))
    prompts = [render_prompt(Sample(q, "0"), tokenizer) for q in ("1 + 2 =", "7 - 3 + 1 =")]
    rollout = HFEngine(model, tokenizer).generate(
        [p for p in prompts for _ in range(2)], max_new_tokens=6, seeds=[1, 2, 3, 4]
    )
    return model, rollout


def test_a_stale_batch_takes_its_ratio_to_the_behaviour_policy_or_is_weighted_by_tis():
    from reasonrl.train.rl import logprobs
    from reasonrl.train.update import policy_loss

    base = [*SMALL, "distributed.backend=ray", "rollout.async_steps=1"]
    cfg = load_config("quickstart", base)
    tis = load_config("quickstart", [*base, "algo.tis_cap=1.05"])
    model, rollout = _small_batch(cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # the update the batch is one behind
        for p in model.parameters():
            p.add_(0.03 * torch.randn_like(p))

    fresh = logprobs(cfg, model, None, None, rollout)  # synchronous: on-policy, nothing recomputed
    assert fresh.old is None and fresh.is_weight is None
    stale = logprobs(cfg, model, None, None, rollout, staleness=1)
    assert stale.old is rollout.logprobs and stale.is_weight is None
    weighted = logprobs(tis, model, None, None, rollout, staleness=1)
    mask = rollout.completion_mask.bool()
    assert not torch.allclose(weighted.old[mask], rollout.logprobs[mask].double(), atol=1e-3)
    ratio = torch.exp(weighted.old - rollout.logprobs.double())
    torch.testing.assert_close(weighted.is_weight, ratio.clamp(max=1.05))
    assert (ratio[mask] > 1.05).any() and (weighted.is_weight <= 1.05).all()

    # the weight multiplies each token's surrogate: a weight of 2 everywhere doubles the loss
    adv = torch.where(mask, 1.0, 0.0).double()
    args = (rollout, mask.double(), adv)
    one, _ = policy_loss(model, *args, weighted, tis, int(mask.sum()), 4)
    doubled = LogProbs(weighted.sampling, weighted.old, None, None, torch.full_like(ratio, 2.0))
    ones = LogProbs(weighted.sampling, weighted.old, None, None, torch.ones_like(ratio))
    two, _ = policy_loss(model, *args, doubled, tis, int(mask.sum()), 4)
    unit, _ = policy_loss(model, *args, ones, tis, int(mask.sum()), 4)
    assert two.item() == pytest.approx(2 * unit.item()) and one.item() != unit.item()


@pytest.mark.parametrize("mode", TIS_MODES)
def test_tis_gives_the_hand_computed_gradient_when_the_engine_s_logprobs_are_off(mode):
    """An engine whose log-probs differ from the trainer's (vLLM's kernels, here noise added on
    purpose): with algo.tis_cap the gradient is −Σ w·A·∇log π / N, w the hand-computed weight
    of each token; without, it is the plain policy gradient, which differs."""
    from reasonrl.models.forward import completion_logprobs
    from reasonrl.train.rl import logprobs
    from reasonrl.train.update import policy_loss

    cap = 1.5
    base = [*SMALL, "algo.beta=0", "algo.aggregation=token_mean"]
    plain = load_config("quickstart", base)
    tis = load_config("quickstart", [*base, f"algo.tis_cap={cap}", f"algo.tis_mode={mode}"])
    model, exact = _small_batch(plain)
    mask = exact.completion_mask.double()
    noise = 0.4 * torch.randn(exact.logprobs.shape, generator=torch.Generator().manual_seed(0))
    rollout = replace(exact, logprobs=(exact.logprobs.double() + noise) * mask)
    adv = torch.tensor([[1.0], [-0.5], [0.7], [-1.2]], dtype=torch.float64) * mask
    n = int(mask.sum())

    def gradient(loss: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        loss.backward(retain_graph=True)  # the hand-made losses share one forward
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    def trainer_loss(cfg) -> torch.Tensor:
        return policy_loss(
            model, rollout, mask, adv, logprobs(cfg, model, None, None, rollout), cfg, n, 4
        )[0]

    # by hand: the per-token log-ratio to the engine, its weight by the mode's rule
    logp = completion_logprobs(
        model, rollout.input_ids, rollout.attention_mask, mask.shape[1], plain.rollout.temperature
    )[0]
    d = (logp.detach() - rollout.logprobs) * mask
    if mode.startswith("sequence"):
        d = d.sum(-1, keepdim=True).expand_as(d)
    ratio = torch.exp(d)
    w = ratio.clamp(max=cap) if mode.endswith("truncate") else torch.where(ratio > cap, 0.0, ratio)
    assert (ratio[mask.bool()] > cap).any() and (ratio[mask.bool()] <= cap).any()
    expected = gradient(-(w * adv * logp * mask).sum() / n)

    torch.testing.assert_close(gradient(trainer_loss(tis)), expected)
    uncorrected = gradient(trainer_loss(plain))
    torch.testing.assert_close(uncorrected, gradient(-(adv * logp * mask).sum() / n))
    assert not torch.allclose(uncorrected, expected, rtol=1e-3, atol=0)


def test_the_mismatch_metrics_by_hand():
    batch = _scored([[1.0, 0.0]], [[1, 1], [1, 0]])
    ro = replace(batch.rollout, logprobs=torch.tensor([[-1.0, -2.0], [-0.5, 0.0]]))
    trainer = torch.tensor([[-1.1, -1.0], [-0.5, -7.0]])  # |diff| 0.1, 1.0, 0 (and padding)
    corrected = torch.tensor([[False, True], [False, True]])  # padding never counts
    lp = LogProbs(trainer, trainer, None, None, torch.ones(2, 2), corrected, recomputed=True)
    out = mismatch_metrics(ro, lp, ro.model_mask.float(), Ranks())
    assert out["rollout/logprob_diff/mean"] == pytest.approx(1.1 / 3)
    assert out["rollout/logprob_diff/max"] == pytest.approx(1.0)
    assert out["rollout/tis_clipped"] == pytest.approx(1 / 3)
    no_tis = mismatch_metrics(ro, replace(lp, is_corrected=None), ro.model_mask.float(), Ranks())
    assert "rollout/tis_clipped" not in no_tis


@pytest.mark.parametrize("algo", ["ppo", "reinforce_pp", "rloo", "dapo"])
def test_an_episode_trains_as_its_model_tokens_alone(algo):
    """Advantages of a batch whose rows hold environment tokens (model_mask 0 inside the
    completion) equal, on the model tokens, those of the same batch with the environment's
    columns deleted, and are 0 on the environment's: GAE and returns-to-go step from one model
    token to the next, whitening and KL count model tokens only."""
    overrides = [f"algo.name={algo}", "algo.kl=k1", "algo.kl_in=reward", "algo.beta=0.1"]
    cfg = load_config(None, overrides)
    gen = torch.Generator().manual_seed(0)
    present = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]])
    model = torch.tensor([[1, 0, 0, 1, 1, 1], [1, 1, 0, 1, 1, 0], [1, 1, 0, 0, 0, 0]])
    rewards = [[1.0, 0.0, 0.5]]
    values, ref = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)
    sampling = torch.randn(3, 6, generator=gen)
    batch = _scored(rewards, present.tolist())
    episode = replace(batch, rollout=replace(batch.rollout, model_mask=model))
    got = advantages(
        episode, LogProbs(sampling, None, ref, values), cfg.algo, get_advantage(cfg.algo.advantage)
    )
    assert not (got.advantages * (1 - model)).any() and torch.equal(got.mask, model.float())
    # the same rows with the environment's columns taken out, left-aligned and right-padded
    keep = [row.nonzero().flatten() for row in model]

    def squeeze(t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(t)
        for i, cols in enumerate(keep):
            out[i, : len(cols)] = t[i, cols]
        return out

    alone = _scored(rewards, squeeze(model).tolist())
    lp = LogProbs(squeeze(sampling), None, squeeze(ref), squeeze(values))
    want = advantages(alone, lp, cfg.algo, get_advantage(cfg.algo.advantage))
    torch.testing.assert_close(squeeze(got.advantages), want.advantages)
    if want.returns is not None:
        torch.testing.assert_close(squeeze(got.returns * model), want.returns)


def test_episode_metrics_count_calls_per_problem_group_only_when_there_are_several():
    def episode(calls: int, error: bool = False) -> Episode:
        return Episode(
            [("model", "x")] * (calls + 1),
            {"calculator": calls} if calls else {},
            {"timeout": 1} if error else {},
        )

    episodes = [episode(1), episode(2, error=True), episode(0), episode(0)]
    out = episode_metrics(episodes, ["sum/hard", "sum/hard", "sum/easy", "sum/hard"])
    assert out["tools/calls_per_episode"] == 0.75
    assert out["tools/calculator/calls_per_episode"] == 0.75
    assert out["tools/calls_per_episode/sum/hard"] == 1.0
    assert out["tools/calls_per_episode/sum/easy"] == 0.0
    assert out["tools/errors"] == 1.0 and out["tools/errors/timeout"] == 1.0
    assert out["episode/turns"] == (2 + 3 + 1 + 1) / 4
    single = episode_metrics(episodes, ["sum"] * 4)
    assert not any(k.startswith("tools/calls_per_episode/") for k in single)
