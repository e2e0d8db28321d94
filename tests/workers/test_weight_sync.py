"""Weights broadcast in a gloo group on 127.0.0.1 (``distributed.weight_sync=collective``): one
flat buffer per dtype (tied tensors once), and two Ray actors that hold, after each push, the
trainer's tensors exactly, tied embeddings included, and every version still named. A member
killed in the middle of a push fails it within the members' receive timeout, not the groups'
five minutes, and leaves the others free to join the next group."""

from __future__ import annotations

import copy
import ipaddress
import time
from collections.abc import Iterator
from datetime import timedelta

import psutil
import pytest
import torch

from reasonrl.config import load_config
from reasonrl.distributed.groups import buckets
from reasonrl.models import load_model
from reasonrl.workers import start_ray
from reasonrl.workers.weight_sync import (
    GROUP,
    Broadcaster,
    BroadcastFailed,
    WeightReceiver,
    load_flat,
)


class Member(WeightReceiver):
    """A rollout worker's weights end, with a way to read them back."""

    def __init__(self, model: torch.nn.Module, receive_timeout: float | None = None) -> None:
        super().__init__()
        self.model = model
        if receive_timeout is not None:
            self.receive_timeout = timedelta(seconds=receive_timeout)

    def state(self, version: int) -> dict[str, torch.Tensor]:
        self.load(version)
        return self.model.state_dict()

    def versions(self) -> list[int]:
        return sorted(self.staged)

    def tied(self) -> bool:
        return self.model.lm_head.weight is self.model.model.embed_tokens.weight


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_model(load_config("quickstart", ["model.dtype=float64"]).model, torch.device("cpu"))


def moved(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Another version of ``model``'s weights, tied as the model ties them."""
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return other.state_dict()


def test_buckets_hold_each_tensor_once_by_dtype_within_the_cap(
    model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = model.state_dict()
    layout = buckets(state)
    names = [n for b in layout for n in b.names]
    assert "lm_head.weight" not in names  # the embedding's storage, sent once
    assert set(names) == set(state) - {"lm_head.weight"}
    # a cap below the largest tensor: each tensor alone, and mixed dtypes apart
    mixed = {"a": torch.ones(4), "b": torch.ones(3, dtype=torch.int64), "c": torch.ones(2, 2)}
    monkeypatch.setattr("reasonrl.distributed.groups.BUCKET_BYTES", 24)
    layout = buckets(mixed)
    assert [(b.dtype, b.names) for b in layout] == [
        (torch.float32, ("a",)),
        (torch.float32, ("c",)),
        (torch.int64, ("b",)),
    ]
    monkeypatch.setattr("reasonrl.distributed.groups.BUCKET_BYTES", 32)
    assert [b.names for b in buckets(mixed)] == [("a", "c"), ("b",)]


def test_load_flat_restores_a_tied_model(model: torch.nn.Module) -> None:
    want = moved(model, 0)
    layout = buckets(model.state_dict())
    flats = [torch.cat([want[n].reshape(-1) for n in b.names]) for b in layout]
    other = copy.deepcopy(model)
    load_flat(other, layout, flats)
    got = other.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)  # lm_head: the embedding's, loaded


@pytest.fixture(scope="module")
def members(model: torch.nn.Module) -> Iterator[list]:
    import ray

    start_ray(None, 2)
    actor = ray.remote(num_cpus=1, concurrency_groups={GROUP: 1})(Member)
    started = [actor.remote(model) for _ in range(2)]
    yield started
    for m in started:
        ray.kill(m, no_restart=True)
    ray.shutdown()


def test_a_push_gives_every_member_the_trainers_tensors_exactly(
    model: torch.nn.Module, members: list
) -> None:
    import ray

    sync = Broadcaster("127.0.0.1", "gloo")
    pushed = {v: moved(model, v) for v in (1, 2, 3)}
    sync.push(members, pushed[1], 1, {1})
    sync.push(members, pushed[2], 2, {1, 2})  # a round sent ahead still names version 1
    for version in (1, 2):
        for got in ray.get([m.state.remote(version) for m in members]):
            assert got.keys() == pushed[version].keys()
            assert all(torch.equal(got[k], pushed[version][k]) for k in got)
    assert ray.get([m.tied.remote() for m in members]) == [True, True]
    sync.push(members, pushed[3], 3, {3})
    assert ray.get([m.versions.remote() for m in members]) == [[3], [3]]
    # the store and gloo, here and in the members (Ray's processes are this one's children),
    # listen on loopback only (gRPC's IPv6 sockets show it as ::ffff:127.0.0.1)
    me = psutil.Process()
    listening = {
        ipaddress.ip_address(c.laddr.ip)
        for proc in [me, *me.children(recursive=True)]
        for c in proc.net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert {getattr(a, "ipv4_mapped", None) or a for a in listening} == {
        ipaddress.ip_address("127.0.0.1")
    }


def test_a_member_killed_mid_push_fails_it_soon_and_the_others_take_the_next(
    model: torch.nn.Module, members: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    # three members of its own (no CPUs: the module's two hold Ray's), 1 MB buckets, and a
    # receive timeout of 5 s: a broadcast is relayed through the members, so one of the
    # survivors may be waiting on the dead one
    monkeypatch.setattr("reasonrl.distributed.groups.BUCKET_BYTES", 1 << 20)
    actor = ray.remote(num_cpus=0, concurrency_groups={GROUP: 1})(Member)
    three = [actor.remote(model, 5.0) for _ in range(3)]
    sync = Broadcaster("127.0.0.1", "gloo")
    sync.push(three, moved(model, 1), 1, {1})
    send, sent = Broadcaster._send, []

    def send_then_kill(self: Broadcaster, flat: torch.Tensor) -> None:
        send(self, flat)
        sent.append(flat.numel())
        if len(sent) == 1:
            ray.kill(three[1], no_restart=True)

    monkeypatch.setattr(Broadcaster, "_send", send_then_kill)
    start = time.monotonic()
    with pytest.raises(BroadcastFailed, match="weights version 2 did not reach every worker"):
        sync.push(three, moved(model, 2), 2, {1, 2})
    assert time.monotonic() - start < 60  # the members' 5 s, not the group's 5 minutes
    assert 1 <= len(sent) < len(buckets(moved(model, 2)))  # it failed in the middle
    assert sync.group is None
    survivors = [three[0], three[2]]
    # their receiving threads are free (a call there answers), version 1 still theirs
    free = [m.versions.options(concurrency_group=GROUP).remote() for m in survivors]
    assert all(1 in v for v in ray.get(free, timeout=10))
    monkeypatch.setattr(Broadcaster, "_send", send)
    pushed = moved(model, 3)
    sync.push(survivors, pushed, 3, {3})  # a new group of the two
    for got in ray.get([m.state.remote(3) for m in survivors]):
        assert all(torch.equal(got[k], pushed[k]) for k in pushed)
    for m in survivors:
        ray.kill(m, no_restart=True)
