"""The vLLM server's end of ``rollout.vllm.url``'s weight sync: a weight-transfer backend
(vLLM's pluggable API, ``--weight-transfer-config '{"backend": "reasonrl_gloo"}'``) that receives
the trainer's weights over a gloo group, so a server without a GPU (or on another machine)
follows training as vLLM's own NCCL backend does between GPUs.

reasonrl's vLLM plugin (the ``vllm.general_plugins`` entry point, :func:`register`) registers it
in every vLLM process; this module runs only inside the server, and imports vLLM.

The trainer (rank 0, ``vllm_server.VLLMServerEngine``) serves a ``TCPStore`` and posts the
store's address to ``/init_weight_transfer_engine``; the worker joins as rank 1. Each update
posts the layout (buckets of one dtype: names and shapes) to ``/update_weights`` while the
trainer broadcasts one flat buffer per bucket, which is cut into named tensors and handed to
the model's ``load_weights`` inside vLLM's layerwise reload (``start_weight_update`` /
``finish_weight_update``), as its NCCL backend does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

from reasonrl.distributed.groups import RECEIVE_TIMEOUT, TIMEOUT, open_group

BACKEND = "reasonrl_gloo"


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    host: str  # the trainer's store
    port: int
    prefix: str  # the group's keys in the store (a new group per connection)


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    buckets: list[dict[str, Any]]  # each {"dtype": "float32", "names": [...], "shapes": [...]}


class GlooReceiver(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Receives broadcast buckets from the trainer and loads them into vLLM's model."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config: Any, vllm_config: Any, device: torch.device, model: Any) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: Any = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        if self.parallel_config.world_size > 1:
            raise ValueError(
                f"the {BACKEND} weight transfer feeds one vLLM worker: serve with "
                "tensor and pipeline parallel size 1"
            )
        self.shutdown()  # a trainer that connects again (a new run) replaces the last one
        store = dist.TCPStore(init_info.host, init_info.port, is_master=False, timeout=TIMEOUT)
        self.group = open_group(store, init_info.prefix, 1, 2, "gloo", init_info.host)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError(f"{BACKEND}: /init_weight_transfer_engine was not called")
        for bucket in update_info.buckets:
            shapes = [torch.Size(s) for s in bucket["shapes"]]
            flat = torch.empty(
                sum(s.numel() for s in shapes), dtype=getattr(torch, bucket["dtype"])
            )
            self.group.broadcast(flat, 0).wait(RECEIVE_TIMEOUT)
            parts = flat.split([s.numel() for s in shapes])
            self.model.load_weights(
                [
                    (name, part.view(shape).to(self.device))
                    for name, part, shape in zip(bucket["names"], parts, shapes, strict=True)
                ]
            )

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.abort()
            self.group = None


def register() -> None:
    """reasonrl's vLLM plugin: the ``reasonrl_gloo`` backend, in each process vLLM starts (it
    may call this more than once)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    with contextlib.suppress(ValueError):  # registered already
        WeightTransferEngineFactory.register_engine(BACKEND, __name__, "GlooReceiver")
