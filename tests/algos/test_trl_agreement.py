"""Our functions, composed as TRL 1.16.0's GRPOTrainer composes its loss, agree with it.

TRL's ``_compute_loss`` runs unchanged on a bare object carrying the attributes it reads; only
its model forward (``_get_per_token_logps_and_entropies``) is replaced, returning our log-probs.
Conventions this pins: k3 added after clipping, multiplied by the (token or sequence) ratio when
``use_bias_correction_kl`` is on (our ``kl_in_loss(..., ratio=)``); the four loss types as our
aggregations; logits divided by the temperature; eps 1e-4 on the unbiased group std.
TRL's ``bnpo`` is a token mean per *micro-batch*, which changes with gradient accumulation:
it equals our ``token_mean`` for one micro-batch per step, and we offer nothing else for it.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from reasonrl.algos import (
    aggregate,
    clipped_surrogate,
    grpo_advantages,
    importance_ratio,
    kl_estimate,
    kl_in_loss,
    rloo_advantages,
    token_entropy,
    token_logprobs,
)

pytest.importorskip("trl")  # a pinned test dependency (pyproject's test extra): a guard only

from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402
from trl.trainer.utils import add_fused_lm_head, nanstd  # noqa: E402

AGGREGATION_OF = {
    "grpo": "seq_mean_token_mean",
    "bnpo": "token_mean",
    "dr_grpo": "seq_mean_token_sum_norm",
    "dapo": "token_mean",
}
EPS_LOW, EPS_HIGH, BETA, MAX_LEN = 0.2, 0.28, 0.04, 7
NAN = float("nan")


class _Accelerator:
    """One process: gather and reduce are identities."""

    num_processes = 1

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def reduce(self, x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return x


def _trl_micro_batch_loss(logp, inputs, loss_type, level, bias_correction, accumulation):
    trainer = SimpleNamespace(
        loss_type=loss_type,
        beta=BETA,
        epsilon_low=EPS_LOW,
        epsilon_high=EPS_HIGH,
        importance_sampling_level=level,
        max_completion_length=MAX_LEN,
        current_gradient_accumulation_steps=accumulation,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        use_vllm=False,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        model=SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        _metrics={"train": defaultdict(list)},
        args=SimpleNamespace(
            use_bias_correction_kl=bias_correction,
            delta=None,
            steps_per_generation=accumulation,
        ),
        # The model forward, the only stub: the log-probs we feed to both sides.
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
    )
    return GRPOTrainer._compute_loss(trainer, None, inputs)


def _batch(seed: int):
    gen = torch.Generator().manual_seed(seed)
    f64 = {"generator": gen, "dtype": torch.float64}
    b = 6  # 2 prompts × 3 completions
    lengths = torch.tensor([7, 3, 1, 5, 2, 6])
    mask = (torch.arange(MAX_LEN) < lengths[:, None]).long()
    logp = -torch.rand(b, MAX_LEN, **f64) * 2
    # Old and reference log-probs some way off, so that both clip bounds are hit.
    old = logp + 0.4 * torch.randn(b, MAX_LEN, **f64)
    ref = logp + 0.4 * torch.randn(b, MAX_LEN, **f64)
    rewards = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.9, 0.0]], dtype=torch.float64)
    return logp, old, ref, grpo_advantages(rewards).flatten(), mask


def _ours(logp, old, ref, adv, mask, loss_type, level, bias_correction, step_tokens, step_seqs):
    m = mask.to(logp.dtype)
    pg, _ = clipped_surrogate(logp, old, adv, EPS_LOW, EPS_HIGH, mask=m, ratio_level=level)
    ratio = importance_ratio(logp, old, m, level) if bias_correction else None
    per_token = pg + kl_in_loss(kl_estimate("k3", logp, ref), BETA, ratio)
    return aggregate(
        AGGREGATION_OF[loss_type], per_token, m, step_tokens, step_seqs, norm_len=MAX_LEN
    )


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("on_policy", [True, False])
@pytest.mark.parametrize("loss_type", sorted(AGGREGATION_OF))
def test_loss_and_gradients_match_trl(loss_type, on_policy, level, bias_correction):
    logp0, old, ref, adv, mask = _batch(0)
    # bnpo is per micro-batch: compare it on one micro-batch per step, the others on three.
    accumulation = 1 if loss_type == "bnpo" else 3
    rows = len(adv) // accumulation
    step_tokens = int(mask.sum())
    logp_trl = logp0.clone().requires_grad_()
    logp_ours = logp0.clone().requires_grad_()
    trl_total = ours_total = 0.0
    for start in range(0, len(adv), rows):
        mb = slice(start, start + rows)
        inputs = {
            "prompt_ids": torch.zeros(rows, 2, dtype=torch.long),
            "prompt_mask": torch.ones(rows, 2, dtype=torch.long),
            "completion_ids": torch.zeros(rows, MAX_LEN, dtype=torch.long),
            "completion_mask": mask[mb],
            "advantages": adv[mb],
            "ref_per_token_logps": ref[mb],
            "num_items_in_batch": torch.tensor(step_tokens),
        }
        if not on_policy:  # else TRL takes the detached log-probs, as our trainer does
            inputs["old_per_token_logps"] = old[mb]
        trl_loss = _trl_micro_batch_loss(
            logp_trl[mb], inputs, loss_type, level, bias_correction, accumulation
        )
        trl_loss.backward()
        trl_total += trl_loss.item()
        lp = logp_ours[mb]
        ours = _ours(
            lp,
            lp.detach() if on_policy else old[mb],
            ref[mb],
            adv[mb],
            mask[mb],
            loss_type,
            level,
            bias_correction,
            step_tokens,
            len(adv),
        )
        ours.backward()
        ours_total += ours.item()
    assert ours_total == pytest.approx(trl_total, abs=1e-7)
    torch.testing.assert_close(logp_ours.grad, logp_trl.grad)


def test_trl_bnpo_changes_with_gradient_accumulation():
    """Why bnpo has no aggregation of its own: split in three it is no longer the token mean."""
    logp, old, ref, adv, mask = _batch(1)
    whole = _ours(logp, old, ref, adv, mask, "bnpo", "token", True, int(mask.sum()), len(adv))
    split = 0.0
    for start in range(0, 6, 2):
        mb = slice(start, start + 2)
        inputs = {
            "prompt_ids": torch.zeros(2, 2, dtype=torch.long),
            "prompt_mask": torch.ones(2, 2, dtype=torch.long),
            "completion_ids": torch.zeros(2, MAX_LEN, dtype=torch.long),
            "completion_mask": mask[mb],
            "advantages": adv[mb],
            "old_per_token_logps": old[mb],
            "ref_per_token_logps": ref[mb],
        }
        split += _trl_micro_batch_loss(logp[mb], inputs, "bnpo", "token", True, 3).item()
    assert abs(split - whole.item()) > 1e-3


def test_temperature_scaled_logprobs_match_trls_fused_head(tiny_qwen):
    """TRL scores completions with a fused LM head that divides the logits by the temperature;
    our chunked token_logprobs / token_entropy on the model's logits give the same numbers."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32, (3, 9), generator=gen)
    attention = torch.ones_like(ids)
    with torch.no_grad():
        logits = tiny_qwen(input_ids=ids, attention_mask=attention).logits
        add_fused_lm_head(tiny_qwen, temperature=0.7, outputs=("log_probs", "entropy"))
        out = tiny_qwen(
            input_ids=ids, attention_mask=attention, labels=ids.clone(), fused_lm_head=True
        )
    torch.testing.assert_close(
        token_logprobs(logits[:, :-1], ids[:, 1:], 0.7, chunk_tokens=5), out.log_probs
    )
    torch.testing.assert_close(token_entropy(logits[:, :-1], 0.7, chunk_tokens=5), out.entropy)


def _trl_group_advantages(rewards: torch.Tensor, group: int, scale: str) -> torch.Tensor:
    """grpo_trainer.py (1.16.0) `_generate_and_score_completions`, "sum_then_normalize" branch,
    transcribed with TRL's own nanstd: the statistics are inline there, not a function."""
    mean = torch.nanmean(rewards.view(-1, group), dim=1).repeat_interleave(group, dim=0)
    if scale == "batch":
        std = nanstd(rewards).expand_as(rewards)
    else:
        std = nanstd(rewards.view(-1, group), dim=1).repeat_interleave(group, dim=0)
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def _trl_rloo_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """rloo_trainer.py (1.16.0) `_generate_and_score_completions`, transcribed."""
    grouped = rewards.view(-1, group)
    counts = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    baselines = (torch.nansum(grouped, dim=1, keepdim=True) - grouped) / (counts - 1)
    return torch.nan_to_num(rewards - baselines.view(-1), nan=0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_trl_conventions(scale):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (5, 4), generator=gen).double()
    rewards[0, 1] = NAN  # an uncomputed reward
    rewards[1] = torch.tensor([NAN, 2.0, NAN, NAN])  # a single valid reward
    rewards[2] = 1.0  # all equal
    torch.testing.assert_close(
        grpo_advantages(rewards, scale).flatten(),
        _trl_group_advantages(rewards.flatten(), 4, scale),
    )
    torch.testing.assert_close(
        rloo_advantages(rewards).flatten(), _trl_rloo_advantages(rewards.flatten(), 4)
    )
