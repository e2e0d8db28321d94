"""What a run holds in memory: each model's weights, and the process's peak."""

from __future__ import annotations

import resource

import torch
from torch.distributed.tensor import DTensor

MiB = 2**20


def module_mib(module: torch.nn.Module, trainable_only: bool = False) -> float:
    """MiB of a module's parameters (only those that train, with ``trainable_only``) and
    buffers held by this process, each storage counted once (tied weights share one); under
    FSDP2 a parameter is a DTensor and this rank holds its local shard."""
    seen: dict[int, int] = {}
    tensors = list(module.parameters())
    if trainable_only:
        tensors = [p for p in tensors if p.requires_grad]
    else:
        tensors += list(module.buffers())
    for t in tensors:
        if isinstance(t, DTensor):
            t = t.to_local()
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values()) / MiB


def peak_memory_mib(device: torch.device) -> float:
    """On CUDA, the most memory torch has allocated on ``device`` since the last reset; on CPU,
    the process's peak resident set (everything: Python, tokenizers, all models)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
