"""Routing across nodes: any node serves any key; each key is stored on its N replicas only."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest

from kvactors import ActorSystem, Client, NodeConfig
from kvactors.core.hashing import partition_of
from kvactors.testing import stored_values

TIMEOUT = 10.0


def wait_for(condition: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout}s: {condition}")
        time.sleep(0.05)


@pytest.fixture
def embedded_peer(start_node: Any) -> Iterator[tuple[ActorSystem, Any]]:
    """Node b as a process; node a embedded in this test, joined to b; one copy per key."""
    b = start_node("b", "--replicas", "1", "--read-quorum", "1", "--write-quorum", "1")
    # The embedded node's endpoint must be one b can reach: a fixed free port, not port 0.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = NodeConfig(
        name="a",
        bind=f"tcp://127.0.0.1:{port}",
        peer_bind="tcp://127.0.0.1:0",
        seeds=(b.endpoint,),
        replicas=1,
        read_quorum=1,
        write_quorum=1,
    )
    with ActorSystem(config) as a:
        wait_for(lambda: len(a.ring_owners()) == 2)
        yield a, b


def stored_on(system: ActorSystem, endpoint: str | None, key: bytes) -> Any:
    """What the node at peer `endpoint` holds for `key` in its own store (a store RPC is served
    locally, whoever owns the key)."""
    assert endpoint is not None
    result = system.rpc(endpoint, "store", {"ops": [["get", key]]}, timeout=5).result(10)
    value = result["results"][0]
    return None if value is None else msgpack.unpackb(value)


def test_embedded_client_routes_to_owners_and_any_node_reads_back(
    embedded_peer: tuple[ActorSystem, Any],
) -> None:
    a, b = embedded_peer
    keys = [f"route:{i}" for i in range(200)]
    for index, key in enumerate(keys):
        a.client.put(key, index)
    with Client(b.endpoint, timeout=TIMEOUT) as client:
        assert client.get_many(keys) == {key: index for index, key in enumerate(keys)}
    assert a.client.get_many(keys) == {key: index for index, key in enumerate(keys)}

    snapshot = a.ring_snapshot()
    owners = {snapshot.owner(partition_of(key.encode(), a.config.partitions)) for key in keys}
    assert owners == {"a", "b"}, "200 keys should spread over both nodes"
    for index, key in enumerate(keys[:40]):
        owner = snapshot.owner(partition_of(key.encode(), a.config.partitions))
        other = b.peer_endpoint if owner == "a" else a.peer_endpoint
        mine = a.peer_endpoint if owner == "a" else b.peer_endpoint
        assert stored_on(a, mine, key.encode()) == index
        assert stored_on(a, other, key.encode()) is None, f"{key} stored off its owner"


@pytest.fixture
def replicated_peer(start_node: Any) -> Iterator[tuple[ActorSystem, Any]]:
    """Node b as a process, node a embedded and joined to it, default N (2 of 2 here)."""
    b = start_node("b")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = NodeConfig(
        name="a", bind=f"tcp://127.0.0.1:{port}", peer_bind="tcp://127.0.0.1:0", seeds=(b.endpoint,)
    )
    with ActorSystem(config) as a:
        wait_for(lambda: len(a.ring_owners()) == 2)
        # Both views must hold both members, or a write may count on one replica only.
        with Client(b.endpoint, timeout=TIMEOUT) as client:
            wait_for(lambda: client.status()["replication"]["n"] == 2)
        yield a, b


def test_embedded_client_writes_every_replica_and_keeps_concurrent_updates(
    replicated_peer: tuple[ActorSystem, Any],
) -> None:
    a, b = replicated_peer
    for index in range(20):
        a.client.put(f"both:{index}", index)
    for index in range(20):
        assert stored_values(a.endpoint, f"both:{index}") == [index]
        assert stored_values(b.endpoint, f"both:{index}") == [index]

    # A write from the network in between an embedded read and write stays as a sibling,
    # and `update` folds it in.
    seen = a.client.get_versioned("set")
    assert not seen.found and seen.context is not None
    with Client(b.endpoint, timeout=TIMEOUT) as client:
        client.put("set", [1], context=client.get_versioned("set").context)
    a.client.put("set", [2], context=seen.context)
    assert sorted(map(tuple, a.client.get_versioned("set").siblings)) == [(1,), (2,)]

    def union(values: list[Any]) -> list[Any]:
        return sorted(set().union(*values))

    a.client.update("set", lambda items: sorted({*items, 3}), merge=union, default=[])
    assert a.client.get_versioned("set").siblings == [[1, 2, 3]]
