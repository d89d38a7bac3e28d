"""The node's request loop, fed frames directly: no sockets, real StoreServers.

`kvactors.testing.FakeTransport` plays the transport: this test's thread is its loop
thread, so the StoreServers (on the node's dispatcher, attached to it) run inline, and
what the node sends is collected. The RPC server and the background tasks are served
the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import msgpack
import pytest

from kvactors import ActorSystem
from kvactors.core.hashing import partition_of
from kvactors.core.membership import HandedOver, Joined, Member, MemberStatus
from kvactors.core.placement import build_snapshot
from kvactors.core.versions import state_from_wire, state_to_wire
from kvactors.net import rpc
from kvactors.net.protocol import Codec, encode_request
from kvactors.net.replies import decode_reply
from kvactors.node.request_handler import RequestService
from kvactors.testing import FakeClock, FakeTransport

CLIENT = b"client-1"


class Node:
    """A RequestService over an embedded node's stores, driven by a FakeTransport."""

    def __init__(self, system: ActorSystem) -> None:
        self.system = system
        self.services = system._services
        self.transport = FakeTransport()
        self.clock = FakeClock(1000.0)
        self.service = RequestService(self.services, self.transport, self.clock)  # type: ignore[arg-type]
        self.services.dispatcher.attach(self.transport)

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """One client request, served to its reply."""
        before = len(self.transport.to_clients)
        self.service.handlers.client_frames([CLIENT, encode_request(op, request_id=7, **fields)])
        self.transport.run(self.service.handlers)
        replies = self.transport.to_clients[before:]
        assert len(replies) == 1, replies
        envelope, body = replies[0][:-1], replies[0][-1]
        assert envelope == [CLIENT]
        reply: dict[str, Any] = msgpack.unpackb(body, raw=False)
        return reply

    def call(self, op: str, args: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
        """One RPC call from a peer, served to its answer."""
        before = len(self.transport.to_callers)
        payload = rpc.encode_call(41, op, timeout, args)
        self.service.handlers.peer_request([b"peer-1", rpc.MARKER, payload])
        self.transport.run(self.service.handlers)
        answers = self.transport.to_callers[before:]
        assert len(answers) == 1, answers
        assert answers[0][:2] == [b"peer-1", rpc.MARKER]
        answer = rpc.decode_reply(answers[0][2])
        assert answer["id"] == 41
        return answer

    def close(self) -> None:
        self.service.on_close()
        self.services.dispatcher.detach(self.transport)


@pytest.fixture
def node() -> Iterator[Node]:
    with ActorSystem(partitions=16, name="solo") as system:
        served = Node(system)
        yield served
        served.close()


def test_put_then_get_answers_on_the_clients_envelope(node: Node) -> None:
    assert node.request("put", key="k", value={"a": 1}) == {"ok": True, "id": 7}
    reply = node.request("get", key="k")
    assert reply["ok"] and reply["found"] and reply["value"] == {"a": 1}
    assert isinstance(reply["context"], bytes)
    # The store behind it is the node's own: the embedded client sees the write.
    assert node.system.client.get("k") == {"a": 1}


def test_delete_says_whether_a_value_was_there(node: Node) -> None:
    node.request("put", key="k", value=1)
    assert node.request("delete", key="k")["deleted"] is True
    assert node.request("delete", key="k")["deleted"] is False
    assert node.request("get", key="k")["found"] is False


def test_a_stale_context_keeps_both_siblings(node: Node) -> None:
    node.request("put", key="k", value="first")
    context = node.request("get", key="k")["context"]
    node.request("put", key="k", value="second", context=context)
    assert node.request("put", key="k", value="third", context=context)["conflict"] is True
    reply = node.request("get", key="k", siblings=True)
    assert sorted(reply["siblings"]) == ["second", "third"]


def test_batches_answer_each_key(node: Node) -> None:
    reply = node.request("put_many", items=[["a", 1], ["b", 2]])
    assert [item["ok"] for item in reply["results"]] == [True, True]
    reply = node.request("get_many", keys=["a", "b", "c"])
    assert [item.get("value") for item in reply["results"]] == [1, 2, None]
    assert [item["found"] for item in reply["results"]] == [True, True, False]


def test_bad_input_is_answered_and_the_node_serves_on(node: Node) -> None:
    node.service.handlers.client_frames([CLIENT, b"\xc1 not msgpack"])
    node.service.handlers.client_frames([CLIENT, b"{", b"two frames"])
    node.transport.run(node.service.handlers)
    errors = [decode_reply(frames[-1]) for frames in node.transport.to_clients]
    assert [e["error"]["code"] for e in errors] == ["bad_request", "bad_request"]
    bad_context = node.request("put", key="k", value=1, context=b"\x01junk")
    assert bad_context["error"]["code"] == "bad_request"
    assert node.request("put", key="k", value=1)["ok"]


def test_past_max_inflight_a_request_is_refused_overloaded(node: Node) -> None:
    # A request parked on a restarting partition stays in flight; make the bound 0.
    node.service.inflight._max = 0
    assert node.request("get", key="k")["error"]["code"] == "overloaded"
    assert node.service.status()["overloaded"] == 1


def test_a_request_past_its_deadline_times_out(node: Node) -> None:
    # The request's replica is "away": its StoreServer is unknown to the directory.
    partition = 0
    directory = node.services.directory
    ref = directory.current(partition)
    key = next(f"k{n}" for n in range(1000) if partition_of(f"k{n}".encode(), 16) == partition)
    directory.publish(partition, None)  # type: ignore[arg-type]
    try:
        node.service.handlers.client_frames([CLIENT, encode_request("get", key=key, request_id=3)])
        node.transport.run(node.service.handlers)
        assert node.transport.to_clients == []  # parked: no answer yet
        node.service.on_tick(node.clock.advance(node.system.config.request_timeout + 0.1))
        reply = msgpack.unpackb(node.transport.to_clients[-1][-1], raw=False)
        assert reply["error"]["code"] == "timeout"
        assert node.service.status()["timeouts"] == 1
    finally:
        directory.publish(partition, ref)


def test_a_request_with_its_own_timeout_times_out_then(node: Node) -> None:
    partition = 0
    directory = node.services.directory
    ref = directory.current(partition)
    key = next(f"k{n}" for n in range(1000) if partition_of(f"k{n}".encode(), 16) == partition)
    directory.publish(partition, None)  # type: ignore[arg-type]
    try:
        frame = encode_request("put", key=key, value=1, request_id=4, timeout_ms=200)
        node.service.handlers.client_frames([CLIENT, frame])
        node.transport.run(node.service.handlers)
        node.service.on_tick(node.clock.advance(0.1))
        assert node.transport.to_clients == []  # parked, and not yet due
        node.service.on_tick(node.clock.advance(0.15))
        reply = msgpack.unpackb(node.transport.to_clients[-1][-1], raw=False)
        assert reply == {"ok": False, "id": 4, "error": reply["error"]}
        assert reply["error"]["code"] == "timeout"
        assert node.service.inflight.count == 0
    finally:
        directory.publish(partition, ref)


def test_a_new_ring_is_followed_at_once(node: Node) -> None:
    """What the frontend keeps of a ring per partition is kept for that ring only: once a
    second member owns a share, the next write of a key goes to it too (N=2, W=2)."""
    assert node.request("put", key="k", value=1)["ok"]  # alone: written here only
    assert node.transport.to_peers == []
    snapshot = node.services.ring.current
    me = snapshot.members_by_name["solo"]
    other = Member("other", "tcp://127.0.0.1:9", MemberStatus.ALIVE, 1, 0)
    node.services.ring.publish(build_snapshot(snapshot.version + 1, me, [me, other], 16, 3))
    frame = encode_request("put", key="k", value=2, request_id=8)
    node.service.handlers.client_frames([CLIENT, frame])
    node.transport.run(node.service.handlers)
    assert [endpoint for endpoint, _ in node.transport.to_peers] == ["tcp://127.0.0.1:9"]
    assert len(node.transport.to_clients) == 1  # the first put's: this one waits for W=2
    node.services.ring.publish(snapshot)  # alone again: written here, answered at once
    assert node.request("put", key="k", value=3) == {"ok": True, "id": 7}
    assert len(node.transport.to_peers) == 1


def test_ping_status_and_the_embedded_path(node: Node) -> None:
    assert node.request("ping") == {"ok": True, "id": 7}
    status = node.request("status")["status"]
    assert status["node"] == "solo" and status["partitions"] == 16
    assert status["requests"] == 2
    # The embedded client's path: submit from "another thread", answered by a Future.
    request = Codec.from_config(node.system.config).decode_request(
        encode_request("put", key="e", value=5)
    )
    future = node.service.submit(request)
    node.transport.run(node.service.handlers)
    assert future.result(timeout=1).found is None
    assert node.system.client.get("e") == 5


# -- the RPC server ------------------------------------------------------------------------


def test_rpc_ping_names_the_node(node: Node) -> None:
    assert node.call(rpc.PING, {}) == {"id": 41, "ok": True, "result": {"node": "solo"}}


def test_rpc_store_reads_and_merges_replica_states(node: Node) -> None:
    node.request("put", key="k", value="mine")
    answer = node.call(rpc.STORE, {"ops": [["read", b"k"], ["read", b"none"]]})
    mine, none = (state_from_wire(w) for w in answer["result"]["results"])
    assert [v.value for v in mine.live] == [msgpack.packb("mine")]
    assert none.is_empty
    # Merging the state back changes nothing; a merge of another's write adds a sibling.
    node.call(rpc.STORE, {"ops": [["merge", b"k", state_to_wire(mine)]]})
    assert node.system.client.get("k") == "mine"
    node.call(rpc.STORE, {"ops": [["merge", b"other", state_to_wire(mine)]]})
    assert node.system.client.get("other") == "mine"


def test_rpc_coordinate_writes_for_a_peer(node: Node) -> None:
    answer = node.call("coordinate", {"ops": [["write", b"k", msgpack.packb(3), None, None]]})
    assert answer["result"]["results"] == [["ok", False, 1]]
    assert node.system.client.get("k") == 3


@pytest.mark.parametrize(
    ("op", "args", "code"),
    [
        ("nonsense", {}, "bad_request"),
        (rpc.STORE, {"ops": "not a list"}, "bad_request"),
        (rpc.STORE, {"ops": [["merge", b"k", ["not", "a", "state"]]]}, "bad_request"),
        ("coordinate", {"ops": [["write", b"k", b"\xc1", None, None]]}, "bad_request"),
        ("coordinate", {"ops": [["write", b"k", None, b"\x01junk", None]]}, "bad_request"),
        ("coordinate", {"ops": [["read", b"k"]]}, "bad_request"),  # a store op
        (rpc.STORE, {"ops": [["write", b"k", None, None, None]]}, "bad_request"),  # to coordinate
        (rpc.STORE, {"ops": [["read", b"k" * 100_000]]}, "too_large"),
        ("aae", {}, "unavailable"),  # an embedded node keeps no hash trees
    ],
)
def test_rpc_bad_calls_get_an_error_answer(
    node: Node, op: str, args: dict[str, Any], code: str
) -> None:
    answer = node.call(op, args)
    assert answer["ok"] is False and answer["error"]["code"] == code
    assert node.call(rpc.PING, {})["ok"]  # and the node serves on


def test_a_registered_rpc_op_is_served_by_its_handler(node: Node) -> None:
    node.services.network.handle("echo", lambda args: {"echo": args["x"]})
    assert node.call("echo", {"x": 5})["result"] == {"echo": 5}


# -- background tasks ----------------------------------------------------------------------


class _Inbox:
    """Stands in for an actor ref: keeps what it is told."""

    def __init__(self) -> None:
        self.told: list[object] = []

    def tell(self, message: object) -> None:
        self.told.append(message)

    def is_alive(self) -> bool:
        return True


def test_a_leaving_node_tells_gossip_once_everything_is_handed_over(node: Node) -> None:
    inbox = _Inbox()
    real_gossip, node.services.gossip = node.services.gossip, inbox  # type: ignore[assignment]
    try:
        snapshot = node.services.ring.current
        me = replace(snapshot.members_by_name["solo"], status=MemberStatus.LEAVING)
        node.services.ring.publish(build_snapshot(snapshot.version + 1, me, [me], 16, 3))
        node.service.on_tick(node.clock.advance(0.05))
        node.transport.run(node.service.handlers)
        # Alone, nobody takes the partitions over: the handoff is done at once.
        assert node.service.background.leave is not None
        # (An embedded node joins nobody: its join is over at once, and gossip hears so.)
        assert inbox.told.count(HandedOver()) == 1
        node.service.on_tick(node.clock.advance(0.05))
        assert inbox.told.count(HandedOver()) == 1  # told once
        assert node.service.status()["handoff"] is not None
    finally:
        node.services.gossip = real_gossip


def test_background_tasks_report_in_status(node: Node) -> None:
    status = node.service.status()
    for task in ("handoff", "join", "dropped", "hints", "anti_entropy"):
        assert task in status
    assert status["dropped"] == {"partitions": 0, "keys": 0}


def test_a_finished_join_is_told_to_gossip_once(node: Node) -> None:
    # An embedded node's join has nothing to pull: it is finished on the first tick.
    assert node.service.background.join is not None
    inbox = _Inbox()
    real_gossip, node.services.gossip = node.services.gossip, inbox  # type: ignore[assignment]
    try:
        node.service.on_tick(node.clock.advance(0.05))
        assert inbox.told == [Joined()]
        node.service.on_tick(node.clock.advance(0.05))
        assert inbox.told == [Joined()]
    finally:
        node.services.gossip = real_gossip


def test_a_join_told_while_gossip_is_down_is_told_again_on_a_later_tick(node: Node) -> None:
    real_gossip, node.services.gossip = node.services.gossip, None
    try:
        node.service.on_tick(node.clock.advance(0.05))  # nobody to tell: not lost
        inbox = _Inbox()
        node.services.gossip = inbox  # type: ignore[assignment]
        node.service.on_tick(node.clock.advance(0.05))
        assert inbox.told == [Joined()]
    finally:
        node.services.gossip = real_gossip
