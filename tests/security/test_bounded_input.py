"""Bounded input, against a running node: attacks 6, 7 and 8 of issue 16 replayed over
real ZeroMQ sockets, each refused with ``bad_request`` while the node keeps serving.

A node (an `ActorSystem` with a transport on a free loopback port) is sent what an
attacker would send: `store` merges as a peer would on the node's peer endpoint, and
puts with forged contexts as a client would, through `kvactors.Client`. After each
attack the key is read and written again with a context, the partition's StoreServer
is the one that was serving before (no crash, no restart) and the node has not failed.
docs/security.md ("Bounded input") lists the limits; tests/unit/test_bounds.py tries
each one exactly at, under and over its limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import msgpack
import pytest
import zmq

from kvactors import ActorSystem, Client, NodeConfig
from kvactors.core.clocks import Dot, HlcStamp, VectorClock, counter_ceiling
from kvactors.core.context import MAX_CONTEXT_ENTRIES, decode_context, encode_context
from kvactors.core.hashing import partition_of
from kvactors.core.versions import KeyState, Version, state_to_wire
from kvactors.errors import BadRequestError
from kvactors.net.rpc import MARKER, STORE, decode_reply, encode_call
from kvactors.testing import replica_state

PARTITIONS: Final = 16
SKEW: Final = NodeConfig().max_clock_skew
END_OF_TIME: Final = 2**64 - 1


# -- the node and what an attacker sends it ---------------------------------------------


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., ActorSystem]]:
    """A factory: `start_node(**settings)` starts node "a" on a free loopback port."""
    systems: list[ActorSystem] = []

    def start(**settings: Any) -> ActorSystem:
        config = NodeConfig(name="a", bind="tcp://127.0.0.1:0", partitions=PARTITIONS, **settings)
        system = ActorSystem(config).start()
        systems.append(system)
        return system

    yield start
    for system in systems:
        system.stop()


@pytest.fixture
def node(start_node: Callable[..., ActorSystem]) -> ActorSystem:
    return start_node()


@pytest.fixture
def client(node: ActorSystem) -> Iterator[Client]:
    endpoint = node.endpoint
    assert endpoint is not None
    with Client(endpoint) as connected:
        yield connected


def peer_endpoint(system: ActorSystem) -> str:
    endpoint = system.peer_endpoint
    assert endpoint is not None
    return endpoint


def store_call(system: ActorSystem, ops: list[list[Any]]) -> dict[str, Any]:
    """A `store` call as a peer sends it, from a DEALER of its own; the reply's map."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(peer_endpoint(system))
        sock.send_multipart([MARKER, encode_call(1, STORE, 5.0, {"ops": ops})])
        assert sock.poll(10_000), "the node did not answer a store call"
        return decode_reply(sock.recv_multipart()[-1])
    finally:
        sock.close()


def forged_state(wall_ms: int, *, siblings: int = 1, node: str = "mallory") -> KeyState:
    """A state from no honest replica: `siblings` versions stamped at `wall_ms`."""
    return KeyState.from_versions(
        Version(msgpack.packb(666 + n), Dot(node, n), VectorClock(), HlcStamp(wall_ms, 0, node))
        for n in range(1, siblings + 1)
    )


def merge(system: ActorSystem, key: str, state: KeyState) -> dict[str, Any]:
    return store_call(system, [["merge", key.encode(), state_to_wire(state)]])


def now_ms() -> int:
    return int(time.time() * 1000)


class Serving:
    """The StoreServer serving a key when the attack starts: afterwards the very same
    one must serve it (a crash would have restarted it), and the node must not have
    failed."""

    def __init__(self, system: ActorSystem, key: str) -> None:
        self.system = system
        self.partition = partition_of(key.encode(), PARTITIONS)
        self.ref = system.store_server(self.partition)
        assert self.ref is not None and self.ref.is_alive()

    def unchanged(self) -> None:
        assert self.system.store_server(self.partition) is self.ref
        assert self.ref.is_alive()
        assert self.system.failure is None


def writable_with_context(client: Client, key: str, value: object) -> None:
    """A put and a delete with the context of a read both go through, and a put after
    them is read back."""
    client.put(key, "before delete", context=client.get_versioned(key).context)
    assert client.delete(key, context=client.get_versioned(key).context)
    client.put(key, value, context=client.get_versioned(key).context)
    read = client.get_versioned(key)
    assert read.siblings == [value]


# -- attack 6: a peer's state stamped at the end of time -------------------------------


def test_a_merge_stamped_at_the_end_of_time_is_refused_and_the_key_stays_writable(
    node: ActorSystem, client: Client
) -> None:
    client.put("k", "original")
    serving = Serving(node, "k")
    reply = merge(node, "k", forged_state(END_OF_TIME))
    assert not reply["ok"]
    assert reply["error"]["code"] == "bad_request"
    assert "further ahead" in reply["error"]["message"]
    stored = replica_state(peer_endpoint(node), "k")
    assert [v.stamp.node for v in stored.versions] == ["a"]  # never stored
    writable_with_context(client, "k", "after")
    serving.unchanged()


@pytest.mark.parametrize(("ahead", "taken"), [(SKEW - 5.0, True), (SKEW + 5.0, False)])
def test_a_merge_may_be_stamped_at_most_max_clock_skew_ahead(
    node: ActorSystem, client: Client, ahead: float, taken: bool
) -> None:
    client.put("k", "original")
    serving = Serving(node, "k")
    reply = merge(node, "k", forged_state(now_ms() + int(ahead * 1000)))
    assert reply["ok"] is taken, reply
    assert len(client.get_versioned("k").siblings) == (2 if taken else 1)
    writable_with_context(client, "k", "after")
    serving.unchanged()


# -- attack 7: a client's context with counters at 2**64 - 2, or 256 invented nodes ------


def test_forged_contexts_are_refused_and_the_key_stays_writable_after_a_restart(
    start_node: Callable[..., ActorSystem], tmp_path: Path
) -> None:
    data = {"storage": "lmdb", "data_dir": tmp_path / "data"}
    node = start_node(**data)
    endpoint = node.endpoint
    assert endpoint is not None
    with Client(endpoint) as client:
        client.put("k", "original")
        serving = Serving(node, "k")
        read = client.get_versioned("k").context
        near_the_end = encode_context(VectorClock((("a", 2**64 - 2), ("b", 2**64 - 2))))
        many = encode_context(
            VectorClock.from_dict({f"{n:0255d}": 1 for n in range(MAX_CONTEXT_ENTRIES)})
        )
        for forged in (near_the_end, many):
            with pytest.raises(BadRequestError, match="context"):
                client.put("k", "forged", context=forged)
            with pytest.raises(BadRequestError, match="context"):
                client.delete("k", context=forged)
            with pytest.raises(BadRequestError, match="context"):
                client.put("fresh", "forged", context=forged)
        # Counters as high as a clock max_clock_skew ahead could make, and higher.
        assert read is not None

        def read_and(counter: int) -> bytes:
            return encode_context(decode_context(read).merge(VectorClock((("b", counter),))))

        client.put("k", "ahead", context=read_and(counter_ceiling(now_ms())))
        past_ceiling = counter_ceiling(now_ms() + 2 * int(SKEW * 1000))
        with pytest.raises(BadRequestError, match="max_clock_skew"):
            client.put("k", "forged", context=read_and(past_ceiling))
        assert client.get_versioned("k").siblings == ["ahead"]
        writable_with_context(client, "k", "after")
        serving.unchanged()
    node.stop()

    restarted = start_node(**data)
    endpoint = restarted.endpoint
    assert endpoint is not None
    with Client(endpoint) as client:
        assert client.get("k") == "after"
        writable_with_context(client, "k", "after a restart")


# -- attack 8: a key grown without bound -------------------------------------------------


def test_stale_puts_stop_at_max_siblings_and_a_read_context_resolves_them(
    node: ActorSystem, client: Client
) -> None:
    limit = node.config.max_siblings
    client.put("s", "first")
    stale = client.get_versioned("s").context
    serving = Serving(node, "s")
    for n in range(limit):
        client.put("s", n, context=stale)  # each keeps the others: a sibling more
    assert sorted(client.get_versioned("s").siblings) == list(range(limit))
    refusal = rf"max_siblings \({limit}\).*context"
    with pytest.raises(BadRequestError, match=refusal):
        client.put("s", "one too many", context=stale)
    with pytest.raises(BadRequestError, match=refusal):
        client.delete("s", context=stale)
    read = client.get_versioned("s")
    assert len(read.siblings) == limit  # still readable, as it was
    client.put("s", "resolved", context=read.context)
    assert client.get_versioned("s").siblings == ["resolved"]
    serving.unchanged()


def test_merges_past_max_siblings_are_taken_and_a_write_resolves_them(
    start_node: Callable[..., ActorSystem],
) -> None:
    node = start_node(max_siblings=3)
    endpoint = node.endpoint
    assert endpoint is not None
    with Client(endpoint) as client:
        client.put("m", "mine")
        reply = merge(node, "m", forged_state(now_ms(), siblings=5, node="peer"))
        assert reply["ok"], reply  # a replica's state is never refused for its siblings
        read = client.get_versioned("m")
        assert len(read.siblings) == 6
        with pytest.raises(BadRequestError, match="max_siblings"):
            client.put("m", "stale", context=encode_context(VectorClock()))
        client.put("m", "resolved", context=read.context)
        assert client.get_versioned("m").siblings == ["resolved"]


def test_a_key_stops_at_max_state_bytes_clocks_included(
    start_node: Callable[..., ActorSystem],
) -> None:
    limit = 256 * 1024
    node = start_node(max_state_bytes=limit)
    endpoint = node.endpoint
    assert endpoint is not None
    big = "x" * (100 * 1024)
    with Client(endpoint) as client:
        client.put("b", big)
        stale = encode_context(VectorClock())  # a context that has seen nothing
        serving = Serving(node, "b")
        with pytest.raises(BadRequestError, match=rf"max_state_bytes \({limit}\)"):
            client.put("b", big + "y", context=stale)  # the record would hold 3 values
        # Contexts naming 255 invented nodes of 255 bytes: refused, the key does not grow.
        for batch in range(3):
            names = {f"{batch}{n:0254d}": 1 for n in range(MAX_CONTEXT_ENTRIES - 1)}
            with pytest.raises(BadRequestError, match="nodes"):
                client.put("b", "small", context=encode_context(VectorClock.from_dict(names)))
        state = replica_state(peer_endpoint(node), "b")
        assert len(state.versions) == 1 and len(state.context.entries) == 1
        read = client.get_versioned("b")
        assert read.siblings == [big]
        client.put("b", "small", context=read.context)
        assert client.get("b") == "small"
        serving.unchanged()


def test_the_embedded_client_hears_a_refusal_and_its_store_server_goes_on(
    start_node: Callable[..., ActorSystem],
) -> None:
    node = start_node(max_siblings=2)
    local = node.client
    local.put("e", "first")
    stale = local.get_versioned("e").context
    serving = Serving(node, "e")
    local.put("e", 1, context=stale)
    local.put("e", 2, context=stale)
    with pytest.raises(BadRequestError, match="max_siblings"):
        local.put("e", 3, context=stale)
    read = local.get_versioned("e")
    assert sorted(read.siblings) == [1, 2]
    local.put("e", "resolved", context=read.context)
    assert local.get("e") == "resolved"
    serving.unchanged()
