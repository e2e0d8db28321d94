"""The Ray cluster the workers run in: started on 127.0.0.1 or joined (``start_ray``), and
the CPUs a rank's workers hold, reserved together (``reserve``)."""

from __future__ import annotations

import math
import os
import socket
from typing import Any

from reasonrl.config import ConfigError
from reasonrl.distributed.ranks import Ranks, all_gather_objects, broadcast_object


def start_ray(address: str | None, cpus: float, ranks: Ranks = Ranks(), gpus: float = 0.0) -> None:
    """Join the Ray cluster at ``address``, or start one on this machine (``None``) that listens
    and connects on 127.0.0.1 only, with at least ``cpus`` CPUs so that every worker gets one
    (and ``gpus`` GPUs for the rollout workers: Ray counts a machine's own).
    With several ``ranks`` (every rank calls this), rank 0 starts that one and the others join
    it, at the address it broadcasts; ``cpus`` is then every rank's workers' together.
    Raises ``ConfigError`` when Ray is missing or a cluster has fewer CPUs or GPUs than the
    workers hold (an actor would wait for one forever)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        # Ray takes the node's address to be 127.0.0.1, and binds its servers there, only where
        # it believes it cannot form a cluster: this variable, read by its processes at import
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
        from ray._private import ray_constants
    except ImportError:
        raise ConfigError(
            "distributed.backend=ray needs Ray: pip install 'reasonrl[ray]'"
        ) from None
    if address is None:
        ray_constants.ENABLE_RAY_CLUSTER = False  # this process may have imported Ray already
    if not ray.is_initialized():
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
        if address is None:
            hosts = all_gather_objects(socket.gethostname(), ranks)  # every rank says the same
            if len(set(hosts)) > 1:
                raise ConfigError(
                    "distributed.address is unset, so rank 0 would start Ray on its machine, "
                    f"on 127.0.0.1 only, but the ranks run on {', '.join(sorted(set(hosts)))}: "
                    "start a cluster (`ray start`) and give its address as distributed.address"
                )
            started = None
            if ranks.is_main:
                total = max(os.cpu_count() or 1, math.ceil(cpus))
                ray.init(address="local", num_cpus=total, include_dashboard=False, **options)
                started = (ray.get_runtime_context().gcs_address, os.environ.get("RAY_AUTH_MODE"))
            started = broadcast_object(started, ranks)  # one Ray for every rank
            if not ranks.is_main:
                _join_rank_0(*started, options)
        else:
            try:
                ray.init(address=address, **options)
            except ConnectionError as e:
                raise ConfigError(
                    f"cannot join the Ray cluster at distributed.address={address} ({e}): is "
                    "`ray start --head` running there? A cluster made by `ray start` checks a "
                    "token: export RAY_AUTH_MODE=token before `reasonrl run` (and "
                    "RAY_AUTH_TOKEN_PATH where the token is not in ~/.ray/auth_token)"
                ) from None
    if address is None and ray.util.get_node_ip_address() != "127.0.0.1":
        raise RuntimeError(
            f"Ray was started on {ray.util.get_node_ip_address()} before reasonrl could keep it "
            "on 127.0.0.1: let reasonrl start it, or give distributed.address"
        )
    have = ray.cluster_resources().get("CPU", 0.0)
    if have < cpus:
        raise ConfigError(
            f"the workers hold {cpus:g} CPUs (rollout.workers + rewards.workers, "
            f"distributed.worker_cpus each) but the Ray cluster has {have:g}: fewer workers, "
            "a smaller distributed.worker_cpus, or more nodes"
        )
    have = ray.cluster_resources().get("GPU", 0.0)
    if have < gpus:
        raise ConfigError(
            f"the rollout workers hold {gpus:g} GPUs (rollout.workers × "
            f"distributed.worker_gpus) but the Ray cluster has {have:g}: fewer workers, a "
            "fraction of a GPU each (distributed.worker_gpus=0.5 puts two on one), or more GPUs"
        )


def _join_rank_0(gcs: str, auth_mode: str | None, options: dict[str, Any]) -> None:
    """Join the Ray that rank 0 started on this machine's 127.0.0.1 (at ``gcs``)."""
    import ray

    if auth_mode is not None:  # a Ray that ray.init starts checks a token (~/.ray/auth_token)
        os.environ["RAY_AUTH_MODE"] = auth_mode  # which this process sends only when told,
        ray._raylet.Config.initialize("")  # and reads the variable only on this refresh
    ray.init(address=gcs, **options)


def reserve(bundles: list[dict[str, float]], timeout: float, ranks: Ranks) -> Any:
    """A placement group of ``bundles`` (Ray resources: ``{"CPU": 1.0, "GPU": 0.5}``), one per
    worker of this rank, packed on as few nodes as can hold them. Raises ``ConfigError`` when
    the cluster cannot give them within ``timeout`` seconds (too few free CPUs or GPUs: other
    jobs, or other ranks' workers, hold them), rather than leaving the workers waiting forever:
    on every rank (every rank calls this), with the first refused rank's message, which rank 0
    prints."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group(bundles, strategy="PACK")
    refused = None
    try:
        ray.get(group.ready(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        kinds = sorted({kind for bundle in bundles for kind in bundle})  # CPU, and GPU if asked
        held = ", ".join(f"{sum(b.get(k, 0.0) for b in bundles):g} {k}s" for k in kinds)
        free = ", ".join(f"{ray.available_resources().get(k, 0.0):g} {k}s" for k in kinds)
        refused = (
            f"rank {ranks.rank}'s {len(bundles)} workers (holding {held}: "
            f"distributed.worker_cpus, distributed.worker_gpus) found no room in the Ray "
            f"cluster within distributed.placement_timeout_s={timeout:g} s ({free} free now): "
            "fewer rollout.workers or rewards.workers, smaller shares each, or a cluster with "
            "more free"
        )
    said = [message for message in all_gather_objects(refused, ranks) if message]
    if said:
        remove_placement_group(group)
        raise ConfigError(said[0])
    return group
