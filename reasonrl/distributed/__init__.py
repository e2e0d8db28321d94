"""Training on several processes with torch.distributed: who is where (``ranks``), the model
made data-parallel with DDP or FSDP2 (``parallel``), and checkpoints that resume on any number
of ranks (``checkpoint``). With one process every function here is a no-op or the identity."""

from reasonrl.distributed.checkpoint import (
    full_model_state,
    load_train_state,
    save_train_state,
    whole_state,
)
from reasonrl.distributed.parallel import (
    Parallel,
    full_weights,
    global_counts,
    gradient_sync,
    is_sharded,
    unwrap,
    wrap_model,
)
from reasonrl.distributed.ranks import (
    Ranks,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    shard,
    shutdown,
)

__all__ = [
    "Parallel",
    "Ranks",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "full_model_state",
    "full_weights",
    "gradient_sync",
    "global_counts",
    "init_distributed",
    "is_sharded",
    "load_train_state",
    "save_train_state",
    "shard",
    "shutdown",
    "unwrap",
    "wrap_model",
    "whole_state",
]
