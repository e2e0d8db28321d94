"""Saving and resuming a data-parallel model and its optimizer, across world sizes.

``save_train_state``/``load_train_state`` write and read model + optimizer with
``torch.distributed.checkpoint`` (DCP) in the layout-free form of ``get_state_dict`` (keys are
parameter names, tensors are whole or FSDP shards). DCP records which slice of each tensor every
file holds, so a checkpoint written by N ranks loads on M, under FSDP2, DDP or one process:
FSDP2 shards are re-cut to the new world, a DDP/one-process model's replicated tensors are
written once. Every rank calls both (they are collectives).

``full_model_state`` gathers the whole model, on CPU, on rank 0: the ``state_dict`` argument of
HF ``save_pretrained`` (the exported model, not the resume state).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from reasonrl.distributed.parallel import is_sharded, unwrap
from reasonrl.distributed.ranks import Ranks


def save_train_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    model_state: bool = True,
) -> None:
    """Write ``model``'s and ``optimizer``'s state as a DCP checkpoint in directory ``path``
    (every rank writes its own shards; the directory must be shared by the ranks).
    ``model_state=False``: the optimizer's alone (keyed by parameter name), for a checkpoint
    that holds the weights in another form already (HF ``save_pretrained``)."""
    model_sd, optim_sd = get_state_dict(unwrap(model), optimizer)
    state = {"model": model_sd, "optim": optim_sd} if model_state else {"optim": optim_sd}
    with _one_process_quiet():
        dcp.save(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())


def load_train_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    model_state: bool = True,
) -> None:
    """Restore ``model`` and ``optimizer`` in place from a ``save_train_state`` directory,
    whatever world size and parallel mode wrote it (``model_state=False``: the optimizer
    alone, as it was saved)."""
    # get_state_dict gives this rank's layout (with zero optimizer moments made if none exist
    # yet); DCP fills it from the files, re-cutting shards as needed.
    model_sd, optim_sd = get_state_dict(unwrap(model), optimizer)
    if not model_state:
        state = {"optim": optim_sd}
        with _one_process_quiet():
            dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
        set_optimizer_state_dict(unwrap(model), optimizer, optim_state_dict=state["optim"])
        return
    state = {"model": model_sd, "optim": optim_sd}
    with _one_process_quiet():
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_state_dict(
        unwrap(model),
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
    )


def whole_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on every rank, on the model's device: gathered from the
    shards under FSDP2 (a collective: every rank calls it together), the model's own
    otherwise. For sending the weights elsewhere (Ray workers), where shards are no use."""
    if is_sharded(model):
        options = StateDictOptions(full_state_dict=True)
        return get_model_state_dict(unwrap(model), options=options)
    return unwrap(model).state_dict()


def full_model_state(model: torch.nn.Module, ranks: Ranks) -> dict[str, Any] | None:
    """The whole model's state dict on CPU on rank 0 (None on the others), gathered from the
    shards under FSDP2: pass it to ``unwrap(model).save_pretrained(dir, state_dict=...)``,
    which empties the dict it is given (transformers 5 pops entries as it writes them): pass a
    copy to use the state again. Every rank must call it (the gather is a collective)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(unwrap(model), options=options)
    return state if ranks.is_main else None


@contextmanager
def _one_process_quiet() -> Iterator[None]:
    # DCP warns on every call without a process group, though no_dist says that is meant.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
