"""Data parallelism for the trainers: DDP (each rank holds the whole model) or FSDP2 (each rank
holds 1/world of every parameter, gradient and optimizer state), LoRA included under both.

The one rule a trainer follows: normalise every loss by the *global* step totals
(``global_counts``) — then the gradient a rank computes is its share of the global loss's
gradient, and ``wrap_model`` makes the wrapped model *sum* those shares over ranks (DDP's and
FSDP's default is the mean, which would divide the step by the world size). Every aggregation
in ``reasonrl.algos.aggregate`` is then invariant to the number of ranks, as it already is to
gradient accumulation.

Gradient clipping needs nothing new: ``torch.nn.utils.clip_grad_norm_`` on FSDP2's DTensor
gradients returns the global norm (a replicated DTensor; ``float()`` of it is the value).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from reasonrl.distributed.ranks import Ranks, all_reduce_sum

Parallel = Literal["ddp", "fsdp"]


def global_counts(step_tokens: int, step_seqs: int, ranks: Ranks) -> tuple[int, int]:
    """The step's completion tokens and sequences summed over ranks (one all-reduce): what the
    ``step_tokens`` and ``step_seqs`` of ``reasonrl.algos.aggregate`` must be under several
    ranks. Call once per optimizer step, with this rank's totals over all its micro-batches."""
    if ranks.world_size == 1:
        return step_tokens, step_seqs
    both = all_reduce_sum(torch.tensor([step_tokens, step_seqs], dtype=torch.float64), ranks)
    return int(both[0].item()), int(both[1].item())


def wrap_model(
    model: torch.nn.Module, parallel: Parallel, ranks: Ranks, device: torch.device
) -> torch.nn.Module:
    """``model`` on ``device``, made data-parallel over the ranks; with one rank, the model
    itself. ``ddp``: a ``DistributedDataParallel`` wrapper (use ``unwrap`` to reach the model's
    own methods). ``fsdp``: the model itself, sharded in place with ``fully_shard`` — each
    decoder layer, then the root. Under both, gradients are summed over ranks (see the module
    docstring). A peft ``PeftModel`` works under both; only its adapters are reduced.

    Under ``fsdp`` the model may arrive on the CPU: each ``fully_shard`` moves one layer to
    ``device`` and keeps its shard, so no device ever holds the whole model."""
    if ranks.world_size == 1 or parallel != "fsdp":
        model.to(device)
    if ranks.world_size == 1:
        return model
    if parallel == "ddp":
        # broadcast_buffers=False: the model's buffers (rotary tables) are not trained, and a
        # broadcast in every forward would deadlock ranks running different numbers of them.
        # torch 2.13 calls it deprecated, but its successor still syncs at init: keep it, quietly.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated")
            ddp = DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        ddp.register_comm_hook(None, _sum_hook)
        return ddp
    if parallel == "fsdp":
        mesh = init_device_mesh(device.type, (ranks.world_size,))
        for layer in _decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        for m in _fsdp_modules(model):
            m.set_gradient_divide_factor(1.0)
        return model
    raise ValueError(f"unknown parallel mode {parallel!r}; choose 'ddp' or 'fsdp'")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (for ``generate``, ``save_pretrained``, peft's
    ``disable_adapter``); any other model as it is — FSDP2 shards in place."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def gradient_sync(model: torch.nn.Module, sync: bool) -> AbstractContextManager[None]:
    """Context for one micro-batch's backward: ``sync=False`` on every micro-batch of a step
    but the last lets DDP accumulate locally and all-reduce once. FSDP2 reduce-scatters every
    micro-batch anyway: skipping it would keep whole unsharded gradients on each rank, the
    memory FSDP is there to save, and summing shares per micro-batch gives the same gradient."""
    if not sync and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


@contextmanager
def full_weights(model: torch.nn.Module) -> Iterator[None]:
    """Inside, an FSDP2 model holds its whole (unsharded) weights and runs forwards with no
    collective: for generation and evaluation, where ranks run different numbers of forward
    calls (different prompts, different lengths) and FSDP's per-forward all-gathers would pair
    one rank's gather with another's next collective and hang. Costs one whole model per rank
    while inside; no backward inside. Any other model: nothing changes. Every rank must enter
    and leave together (the unshard and reshard are collectives)."""
    fsdp = _fsdp_modules(model)
    if not fsdp:
        yield
        return
    for m in fsdp:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in fsdp:
            m.reshard()
            # The root keeps its parameters after forward (FSDP's own default for the root).
            m.set_reshard_after_forward(m is not model, recurse=False)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` is sharded by FSDP2 (its whole state exists only gathered from every
    rank: ``full_model_state``); a DDP replica or a plain model holds it whole."""
    return bool(_fsdp_modules(model))


def _fsdp_modules(model: torch.nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    # transformers names the block class that must stay whole in ``_no_split_modules``
    # (Qwen2DecoderLayer, LlamaDecoderLayer, ...); peft wraps the model without changing it.
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"cannot find the decoder layers of {type(model).__name__} to shard "
            "(no transformers `_no_split_modules`); use parallel 'ddp'"
        )
    return layers


def _sum_hook(state, bucket):
    # DDP's default hook divides by the world size; the losses are already divided by the
    # global totals, so the ranks' gradients are shares to add. Unannotated: DDP checks the
    # annotations and rejects the strings that `from __future__ import annotations` makes.
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])
