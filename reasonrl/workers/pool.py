"""The actors (a rollout worker: a policy copy and an engine; a reward worker: the recipe's
verifiers) and the pool that calls them, restarting a worker that dies, hangs or raises and
redoing its share (``Workers``)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reasonrl.config import RunConfig
from reasonrl.envs import ToolUse
from reasonrl.rewards import ScoredBatch, score_batch
from reasonrl.rollout import make_engine
from reasonrl.rollout.base import Rollout
from reasonrl.tasks.base import Sample
from reasonrl.workers.weight_sync import WeightReceiver

# --------------------------------------------------------------------------- the actors


class RolloutWorker(WeightReceiver):
    """A copy of the policy and a rollout engine (``rollout.engine``) in a Ray actor; with
    ``distributed.weight_sync=collective`` also a member of the trainer's weights group."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, cfg: RunConfig, version: int
    ) -> None:
        super().__init__()
        torch.set_num_threads(max(1, int(cfg.distributed.worker_cpus)))
        # with distributed.worker_gpus, Ray shows the actor its GPU as cuda:0
        device = torch.device("cuda" if cfg.distributed.worker_gpus > 0 else "cpu")
        self.model = model.to(device).eval().requires_grad_(False)
        # vllm: its own engine in this actor, following the copy's weights as they are loaded
        self.engine = make_engine(cfg.rollout, model, tokenizer, cfg.rollout.batch_completions)
        ro = cfg.rollout
        self.sampling = {
            "max_new_tokens": ro.max_new_tokens,
            "temperature": ro.temperature,
            "top_p": ro.top_p,
            "top_k": ro.top_k,
        }
        self.version = version  # the weights it was built with
        self.tools = ToolUse.from_config(ro)  # None: single turns
        self.task = cfg.task

    def pid(self) -> int:
        return os.getpid()

    def generate(
        self,
        weights: list[Any],
        version: int,
        prompts: list[str],
        seeds: list[int],
        samples: list[Sample],
    ) -> tuple[Rollout, float]:
        """The completions of ``prompts`` (one per seed; ``samples[i]`` prompt i's problem) from
        weights ``version``, loading them from ``weights`` (``[object ref]``, unresolved: fetched
        only here, when needed), or with ``weights=[]`` from those broadcast or staged
        (``WeightReceiver``). With tools, each completion is an episode with its own toolbox,
        built here from its sample, as ``collect`` builds it in-process."""
        if version != self.version:
            if weights:
                import ray

                self.model.load_state_dict(ray.get(weights[0]))
            else:
                self.load(version)
            self.version = version
        t0 = time.perf_counter()
        episodes = {}
        if self.tools is not None:
            prompts, episodes = self.tools.generate_args(samples, self.engine.tokenizer, self.task)
        rollout = self.engine.generate(prompts, seeds=seeds, **self.sampling, **episodes)
        # on the CPU: unpickled, CUDA tensors would go to the trainer's cuda:0, whatever its own
        return rollout.to(torch.device("cpu")), time.perf_counter() - t0


class RewardWorker:
    """The recipe's verifiers (``rewards``) in a Ray actor."""

    def __init__(self, cfg: RunConfig) -> None:
        torch.set_num_threads(max(1, int(cfg.distributed.worker_cpus)))
        self.rewards = cfg.rewards

    def pid(self) -> int:
        return os.getpid()

    def score(
        self, generated: tuple[Rollout, float], samples: list[Sample]
    ) -> tuple[ScoredBatch, float]:
        rollout = generated[0]
        t0 = time.perf_counter()
        lengths = rollout.lengths.tolist()
        scored = score_batch(rollout.texts, samples, self.rewards, lengths, rollout.episodes)
        return scored, time.perf_counter() - t0


# --------------------------------------------------------------------------- restarts


BEHAVIOUR_DIR = "behaviour"  # in a checkpoint: the weights of rounds sent ahead
START_TIMEOUT_S = 600.0  # the least time a replacement worker is given to start


class WorkerFailed(RuntimeError):
    """A worker's call failed on every restart."""


@dataclass
class Call:
    """A method call on worker ``index``, kept so that it can be sent again."""

    index: int
    method: str
    args: tuple[Any, ...]
    actor: Any
    ref: Any
    redone: bool = False


class Workers:
    """``n`` actors of one kind; one that fails is replaced by a new actor built from the same
    arguments, and the failed call sent to it again. ``placement``: (a placement group, b):
    actor i, and each replacement of it, holds the group's bundle b + i. ``first``: actor 0's
    number among the run's workers of this kind (the names in reports and metrics)."""

    def __init__(
        self,
        kind: str,
        cls: type,
        args: tuple[Any, ...],
        n: int,
        cfg: RunConfig,
        report: Callable[[str], None],
        options: dict[str, Any] | None = None,
        restarted: Callable[[int], None] | None = None,
        placement: tuple[Any, int] | None = None,
        first: int = 0,
    ) -> None:
        """``options``: Ray's actor options besides the CPUs; ``restarted(index)``: called when
        worker ``index`` was replaced, before its failed call is sent again; ``placement``:
        (placement group, its bundle of worker 0), worker i in bundle + i; ``first``: worker
        0's number in the run (its rank's workers after the lower ranks')."""
        import ray

        self.kind, self.args, self.report = kind, args, report
        self.restarted = restarted
        self.placement, self.first = placement, first
        self.max_restarts = cfg.distributed.max_restarts
        self.timeout = cfg.distributed.call_timeout_s
        self.remote = ray.remote(num_cpus=cfg.distributed.worker_cpus, **(options or {}))(cls)
        self.actors: list[Any] = []
        self.pids: list[Any] = []  # each actor's pid, asked at once: a dead one cannot answer
        for _ in range(n):
            self._start(len(self.actors))
        self.restarts = 0

    def __len__(self) -> int:
        return len(self.actors)

    def submit(self, index: int, method: str, *args: Any) -> Call:
        actor = self.actors[index]
        return Call(index, method, args, actor, getattr(actor, method).remote(*args))

    def get(self, call: Call) -> Any:
        """The call's result; a failed worker is restarted and the call redone (``redone``).
        A worker that has not answered ``call_timeout_s`` after this is asked (or after it
        started, for a replacement) counts as failed: a hung process (a deadlock, a verifier
        that never returns) would otherwise stop the run for good."""
        import ray

        failures = 0
        while True:
            try:
                # a replacement's start (imports, weights: a minute on a busy node) is not
                # the call's time
                ray.get(self.pids[call.index], timeout=max(self.timeout, START_TIMEOUT_S))
                return ray.get(call.ref, timeout=self.timeout)
            except ray.exceptions.RayError as e:
                error: Exception = e
                if isinstance(e, ray.exceptions.GetTimeoutError):
                    error = TimeoutError(
                        f"no answer within distributed.call_timeout_s={self.timeout:g} s (raise "
                        "it if a call can take that long)"
                    )
                if call.actor is self.actors[call.index]:  # not restarted for another call
                    failures += 1
                    log = self._log_tail(call.index)
                    ray.kill(call.actor, no_restart=True)
                    self._start(call.index)
                    self.restarts += 1
                    if self.restarted is not None:
                        self.restarted(call.index)
                    self.report(self._describe(call, error, log, failures))
                    if failures > self.max_restarts:
                        raise WorkerFailed(
                            f"{self.kind} worker {self.first + call.index} failed {failures} time"
                            f"{'s' if failures > 1 else ''} in a row "
                            f"(distributed.max_restarts={self.max_restarts}); last error: {error}"
                        ) from e
                call.actor = self.actors[call.index]
                call.ref = getattr(call.actor, call.method).remote(*call.args)
                call.redone = True

    def discard(self, call: Call) -> None:
        """Forget a call that failed with its input: read its error, or Ray reports it as
        never handled."""
        import ray

        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(call.ref)

    def kill(self, index: int) -> None:
        """End worker ``index`` at once, as a crash would (the tests' fault)."""
        import ray

        ray.kill(self.actors[index], no_restart=True)

    def _start(self, index: int) -> None:
        remote = self.remote
        if self.placement is not None:  # the bundle its predecessor held: released by ray.kill
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            group, bundle = self.placement
            strategy = PlacementGroupSchedulingStrategy(group, bundle + index)
            remote = remote.options(scheduling_strategy=strategy)
        actor = remote.remote(*self.args)
        if index == len(self.actors):
            self.actors.append(actor)
            self.pids.append(actor.pid.remote())
        else:
            self.actors[index], self.pids[index] = actor, actor.pid.remote()

    def _describe(self, call: Call, error: Exception, log: str, failures: int) -> str:
        action = "gave up" if failures > self.max_restarts else "restarted it, redoing its share"
        worker = f"{self.kind} worker {self.first + call.index}"
        text = f"{worker} failed in {call.method} ({action}): {error}"
        return text + (f"\n--- the end of its log ---\n{log}" if log else "")

    def _log_tail(self, index: int, lines: int = 30) -> str:
        """The last lines of worker ``index``'s stdout and stderr, where this machine has them
        (Ray names each worker's log files by its pid)."""
        import ray

        try:
            pid = ray.get(self.pids[index], timeout=1)
            logs = Path(ray._private.worker._global_node.get_logs_dir_path())
        except Exception:  # died before it answered, or a log directory on another node
            return ""
        tail = []
        for path in sorted(logs.glob(f"worker-*-{pid}.*")):
            tail += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(tail[-lines:])
