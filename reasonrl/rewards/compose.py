"""The reward of a completion: weighted verifier scores, NaN-aware, with optional gating.

A term whose verifier could not score (None) makes the completion's total NaN, which the
advantage computation masks out of its group statistics; it is counted, never scored 0.
A gated term counts only where its gate term scored at least ``gate_min`` (e.g. format reward
only for correct answers), so a policy cannot farm it on wrong answers. A term limited to some
``tasks`` of a mix (a reward model for one task, a checker for another) is skipped on the other
samples: not computed, NaN in its component, and nothing added to the total.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from reasonrl.config import Rewards, RewardSpec
from reasonrl.rewards.base import RewardResult, Verifier
from reasonrl.rewards.registry import get_verifier
from reasonrl.tasks.base import Sample

if TYPE_CHECKING:
    from reasonrl.rollout.base import Episode

_REWARDS = TypeAdapter(Rewards)


@dataclass(frozen=True)
class RewardTerm:
    """One weighted verifier of a recipe's ``rewards``."""

    name: str
    verifier: Verifier
    weight: float
    gate: str | None = None
    gate_min: float = 1.0
    tasks: tuple[str, ...] | None = None

    def applies(self, sample: Sample) -> bool:
        return self.tasks is None or sample.meta.get("task") in self.tasks


@dataclass(frozen=True)
class ScoredBatch:
    """For N completions: ``total`` [N], the weighted (and gated) sum, NaN where a weighted
    term is missing; ``components`` name → [N], each term's own score (NaN where None);
    ``results`` name → [N] RewardResults."""

    total: list[float]
    components: dict[str, list[float]]
    results: dict[str, list[RewardResult]]

    def uncomputed(self, name: str, rows: Sequence[int] | None = None) -> int:
        """How many of ``rows`` (default all) term ``name`` failed to score (None, not skipped)."""
        results = self.results[name]
        rows = range(len(results)) if rows is None else rows
        return sum(results[i].score is None and results[i].status != "skipped" for i in rows)

    def metrics(self) -> dict[str, float]:
        """``reward/<term>`` (mean over computed scores), ``reward/<term>/uncomputed`` (count of
        scores that failed; skipped ones are not counted) for every term, and
        ``reward/uncomputed`` (completions with a NaN total)."""
        out: dict[str, float] = {}
        for name, scores in self.components.items():
            valid = [s for s in scores if not math.isnan(s)]
            out[f"reward/{name}"] = sum(valid) / len(valid) if valid else math.nan
            out[f"reward/{name}/uncomputed"] = float(self.uncomputed(name))
        out["reward/uncomputed"] = float(sum(math.isnan(t) for t in self.total))
        return out


def build_terms(specs: Mapping[str, float | RewardSpec]) -> list[RewardTerm]:
    """The recipe's ``rewards`` (name → weight or :class:`RewardSpec`) as verifiers."""
    terms = []
    for name, spec in _REWARDS.validate_python(dict(specs)).items():
        verifier = get_verifier(spec.verifier or name, **spec.options)
        tasks = tuple(spec.tasks) if spec.tasks is not None else None
        terms.append(RewardTerm(name, verifier, spec.weight, spec.gate, spec.gate_min, tasks))
    return terms


@functools.lru_cache(maxsize=16)
def _cached_terms(key: str) -> list[RewardTerm]:
    return build_terms(json.loads(key))


def reward_terms(specs: Mapping[str, float | RewardSpec]) -> list[RewardTerm]:
    """The verifiers of a recipe's ``rewards``, built once per distinct spec and reused."""
    plain = {k: RewardSpec.model_validate(v).model_dump() for k, v in specs.items()}
    return _cached_terms(json.dumps(plain, sort_keys=True, default=str))


def _extras(verifier: Verifier, rows: Mapping[str, Sequence[Any] | None]) -> dict[str, list[Any]]:
    """Of the per-completion extras ``rows`` (keyword → one value per completion, or None where
    the batch has none), those the verifier takes as keyword arguments."""
    try:
        params = inspect.signature(verifier).parameters
    except (TypeError, ValueError):
        return {}
    return {k: list(v) for k, v in rows.items() if v is not None and k in params}


def _score(
    verifier: Verifier,
    completions: Sequence[str],
    samples: Sequence[Sample],
    lengths: Sequence[int] | None,
    episodes: Sequence[Episode] | None,
) -> list[RewardResult]:
    lengths = None if lengths is None else [int(n) for n in lengths]
    extras = _extras(verifier, {"n_tokens": lengths, "episode": episodes})
    if extras:
        return [
            verifier(c, s, **{k: v[i] for k, v in extras.items()})
            for i, (c, s) in enumerate(zip(completions, samples, strict=True))
        ]
    batch = getattr(verifier, "batch", None)
    if batch is not None:
        return batch(completions, samples)
    return [verifier(c, s) for c, s in zip(completions, samples, strict=True)]


def score_batch(
    completions: Sequence[str],
    samples: Sequence[Sample],
    weights: Mapping[str, float | RewardSpec],
    lengths: Sequence[int] | None = None,
    episodes: Sequence[Episode] | None = None,
) -> ScoredBatch:
    """Score N completions (``samples[i]`` is the problem of ``completions[i]``) with every
    term of ``weights`` (a recipe's ``rewards``; verifiers are built once and cached).
    ``lengths`` [N]: completion lengths in tokens, for the length penalties. ``episodes`` [N]
    (multi-turn completions): every verifier reads what the model wrote
    (``Episode.model_text``), never a tool's answer, and those taking ``episode`` get it."""
    if len(completions) != len(samples):
        raise ValueError(f"{len(completions)} completions for {len(samples)} samples")
    if episodes is not None:
        completions = [e.model_text for e in episodes]
    terms = reward_terms(weights)
    results = {t.name: _score_applicable(t, completions, samples, lengths, episodes) for t in terms}
    components = {
        name: [math.nan if r.score is None else r.score for r in rs] for name, rs in results.items()
    }
    total = []
    for i in range(len(completions)):
        value = 0.0
        for t in terms:
            if t.weight == 0 or results[t.name][i].status == "skipped":
                continue
            term = t.weight * components[t.name][i]
            if t.gate is not None:
                gate, skipped = components[t.gate][i], results[t.gate][i].status == "skipped"
                if skipped or (not math.isnan(gate) and gate < t.gate_min):
                    term = 0.0
                elif math.isnan(gate):
                    term = math.nan
            value += term
        total.append(value)
    return ScoredBatch(total, components, results)


_SKIPPED = RewardResult(None, "skipped")


def _score_applicable(
    term: RewardTerm,
    completions: Sequence[str],
    samples: Sequence[Sample],
    lengths: Sequence[int] | None,
    episodes: Sequence[Episode] | None,
) -> list[RewardResult]:
    """The term's results, the samples of tasks it does not score skipped (never computed)."""
    rows = [i for i, s in enumerate(samples) if term.applies(s)]
    if len(rows) == len(samples):
        return _score(term.verifier, completions, samples, lengths, episodes)
    scored = _score(
        term.verifier,
        [completions[i] for i in rows],
        [samples[i] for i in rows],
        None if lengths is None else [lengths[i] for i in rows],
        None if episodes is None else [episodes[i] for i in rows],
    )
    results = [_SKIPPED] * len(samples)
    for i, result in zip(rows, scored, strict=True):
        results[i] = result
    return results
