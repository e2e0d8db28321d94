"""``reward_model``: a trained reward model's score of (prompt, completion) as a reward term.

The prompt is the sample rendered with the reward model's own tokenizer (its chat template),
the completion gets EOS appended as in training, and scores are computed in batches under
``torch.no_grad``. Normalisation keeps the term on a scale that mixes with verifiers:
``running`` standardises by the mean and std of every score seen so far (this batch included),
``fixed`` by a given ``mean`` and ``std``, ``none`` leaves the raw score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from reasonrl.config import ConfigError
from reasonrl.rewards.base import RewardResult
from reasonrl.tasks.base import Sample
from reasonrl.tasks.preferences import fit_to_length
from reasonrl.tasks.prompts import render_prompt

NORMALIZATIONS = ("running", "fixed", "none")


class RunningMoments:
    """Mean and (population) std of every value seen, by Welford's update."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0

    def update(self, values: Sequence[float]) -> None:
        for x in values:
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self._m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / self.count) if self.count else 0.0


class RewardModelVerifier:
    """Scores completions with the reward model saved at ``path`` (see reasonrl.models.reward).

    ``batch_size``: completions per forward pass; ``max_length``: prompt + completion tokens,
    the prompt cut from the left first; ``device``: auto, cpu or cuda.
    """

    def __init__(
        self,
        path: str,
        normalize: str = "running",
        mean: float = 0.0,
        std: float = 1.0,
        batch_size: int = 32,
        device: str = "auto",
        max_length: int = 512,
    ) -> None:
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"reward_model: normalize={normalize!r}, not one of {NORMALIZATIONS}")
        if std <= 0:
            raise ConfigError(f"reward_model: std must be > 0 (got {std})")
        # Imported here: the verifier registry imports this module, and torch and transformers
        # should load only when a reward model is actually used.
        from reasonrl.models import load_tokenizer, pick_device
        from reasonrl.models.reward import load_reward_model

        self.tokenizer = load_tokenizer(path)
        self.model = load_reward_model(path, device=pick_device(device)).eval()
        self.normalize = normalize
        self.mean, self.std = mean, std
        self.batch_size = batch_size
        self.max_length = max_length
        self.moments = RunningMoments()

    def __call__(self, completion: str, sample: Sample) -> RewardResult:
        return self.batch([completion], [sample])[0]

    def raw_scores(self, completions: Sequence[str], samples: Sequence[Sample]) -> list[float]:
        """The reward model's scores, unnormalised, one per completion."""
        import torch

        from reasonrl.models.reward import pad_left

        tok = self.tokenizer
        prompts = [render_prompt(s, tok) for s in samples]
        enc_prompts = tok(prompts, add_special_tokens=False)["input_ids"]
        enc_completions = tok(list(completions), add_special_tokens=False)["input_ids"]
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for i in range(0, len(completions), self.batch_size):
            rows = [
                fit_to_length(p, c + [tok.eos_token_id], self.max_length)
                for p, c in zip(
                    enc_prompts[i : i + self.batch_size],
                    enc_completions[i : i + self.batch_size],
                    strict=True,
                )
            ]
            ids, mask = pad_left([p for p, _ in rows], [c for _, c in rows], tok.pad_token_id)
            lengths = torch.tensor([len(c) for _, c in rows])
            with torch.no_grad():
                scores.extend(self.model(ids.to(device), mask.to(device), lengths).tolist())
        return scores

    def batch(self, completions: Sequence[str], samples: Sequence[Sample]) -> list[RewardResult]:
        raw = self.raw_scores(completions, samples)
        if self.normalize == "running":
            self.moments.update(raw)
            mean, std = self.moments.mean, self.moments.std
        elif self.normalize == "fixed":
            mean, std = self.mean, self.std
        else:
            mean, std = 0.0, 1.0
        # A single score (or identical ones) has no spread yet: centre it, do not blow it up.
        scale = std if std > 1e-8 else 1.0
        return [RewardResult((x - mean) / scale, "ok", {"raw_score": x}) for x in raw]
