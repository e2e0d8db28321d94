"""Where this process sits among the training processes, and the few collectives the trainers
need, each a no-op with one process.

``torchrun`` and ``accelerate launch`` both start one process per device and tell each, through
the environment, its ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address
(``MASTER_ADDR``, ``MASTER_PORT``). ``init_distributed`` reads them: without ``WORLD_SIZE`` (or
with 1) the run is one process and no process group is made, so nothing here changes what a
single-process run computes.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from reasonrl.config import ConfigError

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Long enough for a rank to wait out another's generation or checkpoint write; short enough that
# a rank that died mid-collective ends the run instead of hanging it for the default 10-30 min.
TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class Ranks:
    """Where this process sits among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str, timeout: datetime.timedelta = TIMEOUT) -> Ranks:
    """This process's ``Ranks``, read from the launcher's environment; with several processes,
    the default process group is made (gloo on ``device_kind`` "cpu", nccl on "cuda", where the
    process's CUDA device is also set from ``LOCAL_RANK``) — once: a later call (each stage of
    a multi-stage recipe) reuses it. Raises ``ConfigError`` when the environment is half set
    (a launcher variable missing or not an integer), or when a later call needs another
    backend than the group's."""
    world = os.environ.get("WORLD_SIZE")
    if world is None or world.strip() == "1":
        return Ranks()
    missing = [v for v in ENV_VARS if not os.environ.get(v)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world} asks for several processes but {', '.join(missing)} "
            "is not set: start the run with `torchrun --nproc-per-node N ...` or "
            "`accelerate launch --num_processes N ...`, or unset WORLD_SIZE for one process"
        )
    try:
        ranks = Ranks(int(os.environ["RANK"]), int(world), int(os.environ["LOCAL_RANK"]))
        int(os.environ["MASTER_PORT"])
    except ValueError:
        shown = ", ".join(f"{v}={os.environ[v]}" for v in ENV_VARS)
        raise ConfigError(
            f"launcher environment is not integers where it must be: {shown}"
        ) from None
    if not 0 <= ranks.rank < ranks.world_size:
        raise ConfigError(f"RANK={ranks.rank} is outside WORLD_SIZE={ranks.world_size}")
    backends = {"cpu": "gloo", "cuda": "nccl"}
    if device_kind not in backends:
        raise ConfigError(f"device kind {device_kind!r}: choose 'cpu' or 'cuda'")
    backend = backends[device_kind]
    if dist.is_initialized():  # a pipeline's later stage: the group of its first
        if dist.get_backend() != backend:
            raise ConfigError(
                f"this run's process group uses {dist.get_backend()}, but a model on "
                f"{device_kind} needs {backend}: give every stage the same model.device"
            )
        return ranks
    if device_kind == "cuda":
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group(backend, timeout=timeout)
    _made_here.append(True)
    return ranks


# whether init_distributed made the default group: an in-process vLLM engine makes one of its
# own in a single process, and destroys it itself at exit
_made_here: list[bool] = []


def shutdown() -> None:
    """Destroy the process group ``init_distributed`` made, if it did (safe to call with one
    process)."""
    if _made_here and dist.is_initialized():
        dist.destroy_process_group()
    _made_here.clear()


def _several(ranks: Ranks) -> bool:
    return ranks.world_size > 1


def all_reduce_sum(value: T, ranks: Ranks) -> T:
    """The sum of ``value`` (a tensor, int or float) over ranks, on every rank; a tensor is
    summed into a new one, the argument is left as it was."""
    if not _several(ranks):
        return value
    if isinstance(value, torch.Tensor):
        out = value.detach().clone()
        dist.all_reduce(out)
        return out  # type: ignore[return-value]
    # float64 holds every int below 2**53 exactly: token counts, sums of rewards.
    t = torch.tensor(float(value), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return type(value)(t.item())  # type: ignore[call-arg,return-value]


def all_gather_objects(obj: T, ranks: Ranks) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` with one."""
    if not _several(ranks):
        return [obj]
    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, ranks: Ranks) -> T:
    """Rank 0's ``obj`` on every rank (what the other ranks pass is ignored)."""
    if not _several(ranks):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    """Wait until every rank gets here (a rank 0 write that the others then read)."""
    if _several(ranks):
        dist.barrier()


def shard(n_items: int, ranks: Ranks, even: bool = True) -> range:
    """The contiguous block of ``range(n_items)`` this rank owns; the blocks in rank order are
    ``range(n_items)``. Blocks are contiguous so that a prompt's group of completions stays
    whole on one rank: shard the *prompts* and each rank takes every completion of its prompts.

    ``even`` (training batches): ``n_items`` must be divisible by the world size, else
    ``ConfigError`` naming ``rl.prompts_per_step`` — rank invariance needs every rank to hold
    the same share of the same global batch. ``even=False`` (evaluation, where results are
    gathered and order is all that matters): the first ``n_items % world_size`` ranks get one
    item more.
    """
    w, r = ranks.world_size, ranks.rank
    if even and n_items % w:
        raise ConfigError(
            f"rl.prompts_per_step={n_items} must be divisible by the number of processes "
            f"({w}) so every rank trains on the same number of prompts; use a multiple of {w}"
        )
    per, extra = divmod(n_items, w)
    start = r * per + min(r, extra)
    return range(start, start + per + (r < extra))


def _comm_device() -> torch.device:
    # nccl only moves CUDA tensors; gloo moves CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
