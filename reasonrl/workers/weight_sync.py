"""The policy's weights from the trainer to the rollout workers through a torch.distributed group
(``distributed.weight_sync: collective``) instead of Ray's object store.

The trainer (rank 0) and the rollout workers (ranks 1..N) form a group of their own, never the
default one (the trainer may hold its own ranks' group): a ``TCPStore`` served by the trainer,
and a gloo group (nccl when the trainer's weights are on CUDA; only gloo is tested). After each
update the trainer broadcasts the new weights as version *v*; each worker receives them on a
second actor thread (Ray concurrency group ``weights``) into a staging copy while its main thread
goes on generating, and keeps every version that a queued call still names. A generation call
loads the version it names, so runs stay exact as with the object store (docs/ray.md).

On one machine everything listens on 127.0.0.1; on a cluster (``distributed.address`` set) the
store and gloo use each node's address as Ray knows it (``ray.util.get_node_ip_address``).

A restarted worker is not in the group: it gets the versions its redone calls need from the
object store, once (``RayRollouts``), and the group is formed anew at the next push. A worker that
dies or hangs during a push (or before its group is formed) makes the push fail: the trainer's
send to it fails at once (a closed connection) or after ``TIMEOUT``, and the others' receiving
ends within ``RECEIVE_TIMEOUT`` (a broadcast is relayed through the members, so one may be waiting
on the dead one). The trainer then drops the group and ``RayRollouts`` sends that version through
the object store instead; the dead worker is replaced at its next call, as after any failure.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from reasonrl.distributed.groups import (
    RECEIVE_TIMEOUT,
    TIMEOUT,
    Bucket,
    buckets,
    open_group,
    serve_store,
)

GROUP = "weights"  # the workers' Ray concurrency group that joins and receives


def load_flat(model: torch.nn.Module, layout: Sequence[Bucket], flats: Sequence[torch.Tensor]):
    """Copy the flat buffers into ``model``'s own tensors (a tied one gets its storage's)."""
    own = model.state_dict()
    with torch.no_grad():
        for bucket, flat in zip(layout, flats, strict=True):
            for name, part in zip(
                bucket.names, flat.split([s.numel() for s in bucket.shapes]), strict=True
            ):
                own[name].copy_(part.view(own[name].shape))


class BroadcastFailed(RuntimeError):
    """A push that did not reach every member; the group is dropped."""


class Broadcaster:
    """The trainer's end (rank 0): the store, served on ``host``, and the current group."""

    def __init__(self, host: str, backend: str) -> None:
        self.host, self.backend = host, backend
        self.store, self.port = serve_store(host)
        self.group: Any = None  # None: to be formed at the next push
        self.formed = 0  # groups formed so far; each uses its own key prefix

    def push(
        self, members: Sequence[Any], state: dict[str, torch.Tensor], version: int, keep: set[int]
    ) -> None:
        """Broadcast ``state`` as ``version`` to ``members`` (rollout worker actors), which keep
        the staged versions in ``keep``; forms the group first if it has none. Raises
        ``BroadcastFailed`` if a member dies or hangs before every bucket has reached every
        member; the group is then dropped, to be formed anew at the next push, and the members'
        receiving threads are free again."""
        import ray

        received: list[Any] = []
        try:
            if self.group is None:
                self._form(members)
            layout = buckets(state)
            received = [
                m.receive.options(concurrency_group=GROUP).remote(version, layout, keep)
                for m in members
            ]
            for bucket in layout:
                flat = torch.cat([state[n].detach().reshape(-1) for n in bucket.names])
                self._send(flat if self.backend == "nccl" else flat.cpu())
            ray.get(received)
        except (RuntimeError, ray.exceptions.RayError) as e:
            if self.group is not None:
                self.group.abort()
            self.group = None
            for ref in received:  # each ends within RECEIVE_TIMEOUT; read, its error is handled
                with contextlib.suppress(ray.exceptions.RayError):
                    ray.get(ref, timeout=2 * RECEIVE_TIMEOUT.total_seconds())
            raise BroadcastFailed(
                f"weights version {version} did not reach every worker: {e}"
            ) from e

    def _send(self, flat: torch.Tensor) -> None:
        self.group.broadcast(flat, 0).wait()

    def _form(self, members: Sequence[Any]) -> None:
        import ray

        self.formed += 1
        prefix, size = f"group-{self.formed}/", len(members) + 1
        joined = [
            m.join.options(concurrency_group=GROUP).remote(
                self.host, self.port, prefix, rank, size, self.backend
            )
            for rank, m in enumerate(members, start=1)
        ]
        self.group = open_group(self.store, prefix, 0, size, self.backend, self.host)
        ray.get(joined)


class WeightReceiver:
    """A rollout worker's end, mixed into the actor: ``join`` and ``receive`` run on its
    ``weights`` thread, ``load`` on the thread that generates. ``stage`` takes object refs
    instead (a restarted worker's versions)."""

    def __init__(self) -> None:
        self.weights_group: Any = None
        self.staged: dict[int, Any] = {}  # version → (layout, flat buffers) or an object ref
        self.staged_changed = threading.Condition()
        self.receive_timeout = RECEIVE_TIMEOUT

    def join(self, host: str, port: int, prefix: str, rank: int, size: int, backend: str) -> None:
        import ray

        store = dist.TCPStore(host, port, is_master=False, timeout=TIMEOUT)
        mine = host if host == "127.0.0.1" else ray.util.get_node_ip_address()
        self.weights_group = open_group(store, prefix, rank, size, backend, mine)
        self.weights_backend = backend

    def receive(self, version: int, layout: list[Bucket], keep: set[int]) -> None:
        # NCCL receives on the GPU; gloo on the CPU, and load_flat copies to the model's device
        gpu = self.weights_backend == "nccl"
        device = next(self.model.parameters()).device if gpu else torch.device("cpu")
        flats = [torch.empty(b.numel, dtype=b.dtype, device=device) for b in layout]
        for flat in flats:
            self.weights_group.broadcast(flat, 0).wait(self.receive_timeout)
        self.stage({version: (layout, flats)}, keep)

    def stage(self, versions: dict[int, Any], keep: set[int] | None = None) -> None:
        with self.staged_changed:
            self.staged.update(versions)
            if keep is not None:  # the versions no queued call names any more
                self.staged = {v: w for v, w in self.staged.items() if v in keep}
            self.staged_changed.notify_all()

    def load(self, version: int) -> None:
        """Load weights ``version`` into the model, waiting for its broadcast if need be."""
        with self.staged_changed:
            if not self.staged_changed.wait_for(
                lambda: version in self.staged, TIMEOUT.total_seconds()
            ):
                raise RuntimeError(f"weights version {version} never reached this worker")
            weights = self.staged[version]
        if isinstance(weights, tuple):
            load_flat(self.model, *weights)
        else:
            import ray

            self.model.load_state_dict(ray.get(weights))
