"""What the RL step sees of the workers: ``RayRollouts``, a step's generation rounds out and
their completions and rewards back, the weights pushed each step."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM

from reasonrl.config import RunConfig
from reasonrl.distributed.checkpoint import whole_state
from reasonrl.distributed.parallel import is_sharded
from reasonrl.distributed.ranks import Ranks, all_gather_objects, shard
from reasonrl.models.loading import save_torch
from reasonrl.rewards import RewardResult, ScoredBatch
from reasonrl.rollout.base import Rollout, concat_rollouts
from reasonrl.tasks.base import Sample
from reasonrl.workers.cluster import reserve, start_ray
from reasonrl.workers.pool import (
    BEHAVIOUR_DIR,
    Call,
    RewardWorker,
    RolloutWorker,
    WorkerFailed,
    Workers,
)
from reasonrl.workers.weight_sync import GROUP, RECEIVE_TIMEOUT, Broadcaster, BroadcastFailed

# (prompt indices, completion seeds) of a step's generation round: the trainer's choice
Plan = Callable[[int, int], tuple[list[int], list[int]]]

# --------------------------------------------------------------------------- the step's view


def _put(state: dict[str, torch.Tensor]) -> Any:
    """Weights in the object store, copied to the CPU: a reference."""
    import ray

    return ray.put({k: v.detach().to("cpu", copy=True) for k, v in state.items()})


def _whole_model(policy: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The policy as a plain module on the CPU for the workers to hold (and move to their
    device): the policy itself, a copy of it if it is on a GPU, or under FSDP2 (whose modules
    are sharded in place) a new one of its class holding ``state`` whole."""
    if not is_sharded(policy):  # (a LoRA model under FSDP2 is refused: update.check_ranks)
        if next(policy.parameters()).device.type == "cpu":
            return policy
        # on the CPU: a pickled CUDA module goes back to its device when unpickled, which a
        # worker may not have (made at start, before the optimizer's state takes memory)
        return copy.deepcopy(policy).to("cpu")
    # made in the weights' dtype: loaded into a float32 model first, float64 weights would be
    # rounded
    dtype = next(iter(state.values())).dtype
    kind = policy.config._attn_implementation
    model = AutoModelForCausalLM.from_config(policy.config, attn_implementation=kind, dtype=dtype)
    model.load_state_dict(state)
    return model


@dataclass
class _Share:
    """One rollout worker's block of a round's groups, and the reward call that scores it."""

    samples: list[Sample]
    generate: Call
    score: Call


@dataclass
class _Round:
    shares: list[_Share]
    version: int  # the weights it is generated from


def _uncomputed(names: Sequence[str], n: int, reason: str) -> ScoredBatch:
    """``n`` completions whose every reward term failed: NaN, never 0."""
    failed = RewardResult(None, "error", {"error": reason})
    return ScoredBatch(
        [math.nan] * n, {k: [math.nan] * n for k in names}, {k: [failed] * n for k in names}
    )


def _concat(parts: list[ScoredBatch]) -> ScoredBatch:
    names = parts[0].components
    return ScoredBatch(
        [t for p in parts for t in p.total],
        {k: [v for p in parts for v in p.components[k]] for k in names},
        {k: [r for p in parts for r in p.results[k]] for k in names},
    )


class RayRollouts:
    """A run's rollout and reward workers. ``dispatch(step, round)`` sends a generation round
    (its prompts and seeds from ``plan``) to the rollout workers, each a contiguous block of
    whole groups, and each block on to a reward worker as soon as it is generated; ``gather``
    waits for them. ``push_weights`` after each update; rounds dispatched before it keep the
    weights they were sent with.

    With several ``ranks``, each rank makes its own: ``plan`` gives that rank's block of the
    round, and its workers are its share of the run's (``rollout.workers`` and
    ``rewards.workers`` divided by the number of ranks), numbered after the lower ranks'."""

    def __init__(
        self,
        cfg: RunConfig,
        policy: torch.nn.Module,
        tokenizer: Any,
        prompts: Sequence[str],
        samples: Sequence[Sample],
        plan: Plan,
        run_dir: Path,
        console: Console,
        version: int = 0,
        device: torch.device | None = None,
        ranks: Ranks = Ranks(),
    ) -> None:
        d = cfg.distributed
        cpus = (cfg.rollout.workers + d.reward_workers) * d.worker_cpus
        start_ray(d.address, cpus, ranks, cfg.rollout.workers * d.worker_gpus)
        import ray

        # this rank's share of the run's workers (update.check_ranks: they divide evenly)
        n_gen, n_score = (
            cfg.rollout.workers // ranks.world_size,
            d.reward_workers // ranks.world_size,
        )
        generator = {"CPU": d.worker_cpus} | ({"GPU": d.worker_gpus} if d.worker_gpus else {})
        bundles = [generator] * n_gen + [{"CPU": d.worker_cpus}] * n_score
        self.group = reserve(bundles, d.placement_timeout_s, ranks)
        self.ranks = ranks
        self.cfg, self.prompts, self.samples, self.plan = cfg, prompts, samples, plan
        self.device = device or torch.device("cpu")  # the trainer's: where gather's rollouts go
        self.pad_id = tokenizer.pad_token_id
        state = whole_state(policy)  # under FSDP2 a collective, as every rank makes its own
        model = ray.put(_whole_model(policy, state))
        self.log_path, self.console = run_dir / "workers.log", console
        report = self.report
        self.sync: Broadcaster | None = None  # distributed.weight_sync=collective's group
        options: dict[str, Any] = {}
        if d.weight_sync == "collective":
            # a cluster's nodes reach the trainer at Ray's address for it, never at 127.0.0.1
            host = "127.0.0.1" if d.address is None else ray.util.get_node_ip_address()
            # NCCL joins GPUs to GPUs: the trainer's and the workers' (not the trainer's own GPU)
            nccl = self.device.type == "cuda" and d.worker_gpus > 0
            self.sync = Broadcaster(host, "nccl" if nccl else "gloo")
            options["concurrency_groups"] = {GROUP: 1}  # receives while it generates
        if d.worker_gpus:
            options["num_gpus"] = d.worker_gpus
        self.generators = Workers(
            "rollout",
            RolloutWorker,
            (model, tokenizer, cfg, version),
            n_gen,
            cfg,
            report,
            options,
            self._restarted,
            (self.group, 0),
            ranks.rank * n_gen,
        )
        self.scorers = Workers(
            "reward",
            RewardWorker,
            (cfg,),
            n_score,
            cfg,
            report,
            None,
            None,
            (self.group, n_gen),
            ranks.rank * n_score,
        )
        self.version = version  # the policy's updates so far: the workers' own weights
        self.policy = policy  # the last pushed: version `version`
        self.weights: dict[int, Any] = {}  # version → object ref of the later ones
        # the object store keeps every version under FSDP2: a restarted worker gets its
        # weights there, at a moment the other ranks are not joining a gather
        self.sharded = is_sharded(policy)
        if cfg.rollout.async_steps > 0 or self.sharded:  # and a checkpoint writes the versions
            self.weights[version] = _put(state)  # of the rounds sent ahead
        self.rounds: dict[tuple[int, int], _Round] = {}
        self.stats: dict[str, float] = defaultdict(float)

    def report(self, message: str) -> None:
        """A worker's failure: on the console and in the run's workers.log. Every rank appends
        its own workers' failures there, after its number (a failure is one rank's, at a moment
        the others are not waiting for: there is no collective to gather it to rank 0), each
        entry in one append, so entries of different ranks do not interleave."""
        self.console.print(message, style="yellow", markup=False, highlight=False)
        rank = f"rank {self.ranks.rank}: " if self.ranks.world_size > 1 else ""
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {rank}{message}\n")

    def push_weights(self, policy: torch.nn.Module, version: int) -> None:
        """The policy's weights, now version ``version``, for the rounds dispatched next."""
        # besides the versions queued rounds name, the k before this one: a checkpoint taken
        # now writes those of the next k steps' rounds, one of which may be training already
        k = self.cfg.rollout.async_steps
        kept = {r.version for r in self.rounds.values()} | set(range(version - k, version + 1))
        # With collective sync the object store keeps a version only for a restarted worker
        # that redoes a round sent ahead (async_steps): the trainer's own weights have moved on
        state = whole_state(policy)  # every rank pushes: under FSDP2 a collective
        if self.sync is None or self.cfg.rollout.async_steps > 0 or self.sharded:
            self.weights[version] = _put(state)
        if self.sync is not None:
            try:
                self.sync.push(self.generators.actors, state, version, kept)
            except BroadcastFailed as e:
                self._stage_everywhere(self.weights.get(version) or _put(state), version, kept)
                self.report(
                    f"{e}; sent through the object store instead (the group is formed anew at "
                    "the next push, a dead worker replaced at its next call)"
                )
        self.version, self.policy = version, policy
        self.weights = {v: ref for v, ref in self.weights.items() if v in kept}

    def _stage_everywhere(self, ref: Any, version: int, kept: set[int]) -> None:
        """Give every rollout worker weights ``version`` (an object ref) to load when a call
        names it; a dead worker's error is read here, and it is replaced at its next call."""
        import ray

        staged = [
            actor.stage.options(concurrency_group=GROUP).remote({version: ref}, kept)
            for actor in self.generators.actors
        ]
        for done in staged:
            with contextlib.suppress(ray.exceptions.RayError):  # a hung one: replaced later
                ray.get(done, timeout=RECEIVE_TIMEOUT.total_seconds())

    def _restarted(self, index: int) -> None:
        """Rollout worker ``index`` was replaced. With collective sync it is in no group: it
        gets the versions of the calls it redoes from the object store, once, and the group is
        formed anew at the next push. (Forming it now would stop the other workers' receiving
        threads for a rendezvous, and could still not send a version the trainer no longer
        holds.)"""
        if self.sync is None:
            return
        versions = dict(self.weights)
        if self.version not in versions:  # synchronous: the policy is still this version
            versions[self.version] = _put(self.policy.state_dict())  # (never sharded here)
        self.generators.actors[index].stage.options(concurrency_group=GROUP).remote(versions)
        self.sync.group = None

    def dispatch_ahead(self, step: int) -> None:
        """Step ``step``'s first round and, with ``rollout.async_steps`` k, those of the next k
        steps (each once): generated from the current weights, at most k updates behind when
        the step trains."""
        last = min(step + self.cfg.rollout.async_steps, self.cfg.rl.steps - 1)
        for ahead in range(step, last + 1):
            self.dispatch(ahead, 0)

    def dispatch(self, step: int, round_: int, version: int | None = None) -> None:
        """Send round ``round_`` of ``step`` to the workers (once), with weights ``version``
        (default: the current ones)."""
        if (step, round_) in self.rounds:
            return
        version = self.version if version is None else version
        idx, seeds = self.plan(step, round_)
        g, n = self.cfg.rl.completions_per_prompt, len(self.generators)
        # collective sync: the workers hold the version already, broadcast or staged
        sent = self.sync is None and version in self.weights
        weights = [self.weights[version]] if sent else []
        shares = []
        for w in range(n):
            block = shard(len(idx), Ranks(w, n, w), even=False)
            if not block:  # fewer groups than workers
                continue
            mine = [i for i in idx[block.start : block.stop] for _ in range(g)]
            samples = [self.samples[i] for i in mine]
            generate = self.generators.submit(
                w,
                "generate",
                weights,
                version,
                [self.prompts[i] for i in mine],
                seeds[block.start * g : block.stop * g],
                samples,
            )
            score = self.scorers.submit(
                len(shares) % len(self.scorers), "score", generate.ref, samples
            )
            shares.append(_Share(samples, generate, score))
        self.rounds[(step, round_)] = _Round(shares, version)

    def save(self, checkpoint: Path) -> None:
        """With ``rollout.async_steps`` k, write into ``checkpoint`` the older weights that
        the next k steps' rounds are generated from (versions done − k … done − 1; the
        checkpoint's own weights are version done), so a resume regenerates them exactly.
        Rank 0 writes; every rank's copies are the same weights."""
        k = self.cfg.rollout.async_steps
        if k == 0 or not self.ranks.is_main:
            return
        import ray

        folder = checkpoint / BEHAVIOUR_DIR
        folder.mkdir(exist_ok=True)
        for v in range(max(0, self.version - k), self.version):
            if v in self.weights:
                save_torch(ray.get(self.weights[v]), folder / f"version-{v}.pt")

    def resume(self, checkpoint: Path, steps: int) -> None:
        """Send the rounds that the run being resumed had sent ahead from older weights, with
        those weights from ``checkpoint``: step s's first round is generated from version
        max(0, s − k). Rounds whose weights the checkpoint lacks (written before this was
        kept) are generated from the current weights, as ``dispatch_ahead`` would."""
        import ray

        k, done = self.cfg.rollout.async_steps, self.version
        folder = checkpoint / BEHAVIOUR_DIR
        for v in range(max(0, done - k), done):
            if (folder / f"version-{v}.pt").is_file():
                state = torch.load(folder / f"version-{v}.pt", weights_only=True)
                self.weights[v] = ray.put(state)
        if self.sync is not None:  # the workers read only what was broadcast or staged
            for actor in self.generators.actors:
                actor.stage.options(concurrency_group=GROUP).remote(dict(self.weights))
        missing = 0
        for step in range(done, min(done + k, steps)):
            version = max(0, step - k)
            if version in self.weights:
                self.dispatch(step, 0, version)
            else:
                missing += 1
        if missing:
            self.console.print(
                f"{checkpoint} holds no weights for the {missing} step(s) sent ahead: they are "
                "generated from the checkpoint's own weights, so those steps differ from the "
                "uninterrupted run",
                style="yellow",
            )

    def gather(self, step: int, round_: int) -> tuple[Rollout, ScoredBatch, int]:
        """Round ``round_`` of ``step``: its completions, their rewards, and the weights version
        that generated them (dispatched now if it was not)."""
        self.dispatch(step, round_)
        done = self.rounds.pop((step, round_))
        rollouts, scored = [], []
        for share in done.shares:
            t0 = time.perf_counter()
            rollout, seconds = self.generators.get(share.generate)
            self.stats["async/wait_generate_s"] += time.perf_counter() - t0
            worker = f"workers/rollout-{self.generators.first + share.generate.index}"
            self.stats[f"{worker}/tokens"] += float(rollout.lengths.sum())
            self.stats[f"{worker}/s"] += seconds
            if share.generate.redone:  # the reward call waited on the failed generation
                self.scorers.discard(share.score)
                share.score = self.scorers.submit(
                    share.score.index, "score", share.generate.ref, share.samples
                )
            t0 = time.perf_counter()
            scored.append(self._score(share, len(rollout)))
            self.stats["async/wait_score_s"] += time.perf_counter() - t0
            rollouts.append(rollout)
        rollout = concat_rollouts(rollouts, self.pad_id).to(self.device)
        return rollout, _concat(scored), done.version

    def _score(self, share: _Share, n: int) -> ScoredBatch:
        try:
            scored, seconds = self.scorers.get(share.score)
        except WorkerFailed as e:
            self.report(f"{n} completions left uncomputed (NaN): {e}")
            return _uncomputed(list(self.cfg.rewards), n, str(e))
        worker = f"workers/reward-{self.scorers.first + share.score.index}"
        self.stats[f"{worker}/completions"] += n
        self.stats[f"{worker}/s"] += seconds
        return scored

    def metrics(self) -> dict[str, float]:
        """Since the last call: each worker's throughput (``workers/rollout-i/tokens_per_s``,
        ``workers/reward-i/completions_per_s``), the time the trainer waited for each phase
        (``async/wait_*_s``), the rounds already dispatched (``async/queue``), and the restarts
        so far (``workers/restarts``). With several ranks (every rank calls this): every rank's
        workers, the longest wait and queue of any rank, the restarts of all."""
        out = {"async/wait_generate_s": 0.0, "async/wait_score_s": 0.0}
        out.update({k: v for k, v in self.stats.items() if k.startswith("async/")})
        for key, value in self.stats.items():
            if key.endswith("/s") and value > 0:
                worker, unit = (
                    key.removesuffix("/s"),
                    "tokens" if "rollout" in key else "completions",
                )
                out[f"{worker}/{unit}_per_s"] = self.stats[f"{worker}/{unit}"] / value
        out["async/queue"] = float(len(self.rounds))
        out["workers/restarts"] = float(self.generators.restarts + self.scorers.restarts)
        self.stats.clear()
        parts = all_gather_objects(out, self.ranks)
        keys = dict.fromkeys(k for part in parts for k in part)  # rank 0's order first
        values = {k: [part[k] for part in parts if k in part] for k in keys}
        return {k: sum(v) if k == "workers/restarts" else max(v) for k, v in values.items()}

    @staticmethod
    def progress_fields(metrics: dict[str, float]) -> dict[str, float]:
        """What the progress bar shows of a step's ``metrics``: the rollout workers' tokens/s
        (summed), the trainer's wait for them and the reward workers, the rounds sent ahead."""
        return {
            "gen tok/s": sum(
                v for k, v in metrics.items() if k.startswith("workers/rollout-") and "/tok" in k
            ),
            "wait s": metrics["async/wait_generate_s"] + metrics["async/wait_score_s"],
            "queue": metrics["async/queue"],
        }

    def close(self) -> None:
        import ray

        for actor in [*self.generators.actors, *self.scorers.actors]:
            ray.kill(actor, no_restart=True)
        self.sync = None  # its store and group
        ray.util.remove_placement_group(self.group)

    def __enter__(self) -> RayRollouts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
