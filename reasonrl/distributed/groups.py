"""torch.distributed groups of their own beside a run's ranks, and the weights they carry: a
store served on one address, a gloo (or nccl) group over its keys, and a state dict cut into
buckets of one dtype, each broadcast as one flat buffer. Ray's rollout workers
(``workers.weight_sync``) and a separate vLLM server (``rollout.vllm_server``) receive the
policy's weights this way."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(minutes=5)  # a group's rendezvous and each broadcast; a worker may be starting
# A member's wait for each bucket. The trainer sends the buckets back to back, so a longer gap
# means the broadcast has failed, and a member relaying from a dead one would otherwise wait for
# the whole TIMEOUT: neither the trainer dropping its group nor an abort here ends that wait.
RECEIVE_TIMEOUT = timedelta(seconds=60)
# One broadcast per bucket, not per tensor: each collective costs a round trip (gloo) or a
# launch and a sync (nccl) whatever its size, and a model has hundreds of tensors. The cap
# bounds the trainer's extra flat copy for a large model.
BUCKET_BYTES = 256 << 20


@dataclass(frozen=True)
class Bucket:
    """Tensors of one dtype broadcast as one flat buffer, in this order."""

    dtype: torch.dtype
    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def numel(self) -> int:
        return sum(s.numel() for s in self.shapes)


def buckets(state: dict[str, torch.Tensor]) -> list[Bucket]:
    """``state``'s tensors grouped by dtype into buckets of at most ``BUCKET_BYTES``, each tensor
    once: tied ones (``lm_head.weight`` is the embedding's) share storage and are sent once."""
    by_dtype: dict[torch.dtype, list[tuple[str, torch.Size]]] = {}
    seen = set()
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.dtype)
        if key not in seen:
            seen.add(key)
            by_dtype.setdefault(t.dtype, []).append((name, t.shape))
    out = []
    for dtype, items in by_dtype.items():
        start, size = 0, 0
        for i, (_, shape) in enumerate(items):
            nbytes = shape.numel() * dtype.itemsize
            if i > start and size + nbytes > BUCKET_BYTES:
                out.append(_bucket(dtype, items[start:i]))
                start, size = i, 0
            size += nbytes
        out.append(_bucket(dtype, items[start:]))
    return out


def _bucket(dtype: torch.dtype, items: list[tuple[str, torch.Size]]) -> Bucket:
    return Bucket(dtype, tuple(n for n, _ in items), tuple(s for _, s in items))


def open_group(store: dist.Store, prefix: str, rank: int, size: int, backend: str, host: str):
    """A process group of its own over ``store``'s keys under ``prefix``; gloo connects on
    ``host``."""
    store = dist.PrefixStore(prefix, store)
    if backend == "nccl":
        nccl_opts = dist.ProcessGroupNCCL.Options()
        nccl_opts._timeout = TIMEOUT
        return dist.ProcessGroupNCCL(store, rank, size, nccl_opts)
    opts = dist.ProcessGroupGloo._Options()
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    opts._timeout = TIMEOUT
    return dist.ProcessGroupGloo(store, rank, size, opts)


def serve_store(host: str) -> tuple[dist.TCPStore, int]:
    """A ``TCPStore`` served on ``host`` alone, at a free port, and that port."""
    listener = socket.create_server((host, 0))  # bound here: TCPStore alone binds all
    port = listener.getsockname()[1]
    store = dist.TCPStore(
        host,
        port,
        is_master=True,
        wait_for_workers=False,
        timeout=TIMEOUT,
        master_listen_fd=listener.detach(),  # the store owns and closes it
    )
    return store, port
