"""Tests for kvactors.node.channel: the node's one route of replica ops. An op for this
node goes to its StoreServer's queue as it is; an op for a peer goes in its wire form to
that peer's calls (a write to coordinate, to the coordinate calls), encoded once however
many peers get the same op. `LocalBatches` and `PeerCalls` are recorders here."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, cast

import pytest

from kvactors.core.clocks import HlcStamp
from kvactors.core.ops import (
    Coordinate,
    Forget,
    MergeKey,
    MergeMany,
    MergeRecord,
    ReadKey,
    WriteKey,
    to_wire,
)
from kvactors.core.versions import EMPTY_STATE, coordinate_write
from kvactors.errors import KVActorsError
from kvactors.net import rpc
from kvactors.node import channel as channel_module
from kvactors.node.channel import NodeChannel
from kvactors.node.local_batches import LocalBatches
from kvactors.node.peer_calls import PeerCalls
from kvactors.replication.channel import IGNORE_ANSWERS, ReplicaChannel
from kvactors.storage.records import encode_state, read_wire_state

STATE = coordinate_write(EMPTY_STATE, "a", EMPTY_STATE.context, b"\x03", HlcStamp(1, 0, "a"))


class Local:
    def __init__(self) -> None:
        self.queued: defaultdict[int, list[Any]] = defaultdict(list)


class Peers:
    def __init__(self) -> None:
        self.replica_ops: list[tuple[str, list[Any], Any, Any]] = []
        self.coordinate_ops: list[tuple[str, list[Any], Any, Any]] = []
        self.later_ops: list[tuple[str, list[Any]]] = []

    def to_replica(self, name: str, wire_op: list[Any], target: Any, tag: Any) -> None:
        self.replica_ops.append((name, wire_op, target, tag))

    def to_coordinator(self, name: str, wire_op: list[Any], target: Any, tag: Any) -> None:
        self.coordinate_ops.append((name, wire_op, target, tag))

    def later(self, name: str, wire_op: list[Any]) -> None:
        self.later_ops.append((name, wire_op))


class Target:
    def replica_done(self, tag: Any, result: Any) -> None:
        raise AssertionError("nothing answers here")

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        raise AssertionError("nothing fails here")


TARGET = Target()


def node_channel() -> tuple[NodeChannel, Local, Peers]:
    local, peers = Local(), Peers()
    channel = NodeChannel(
        "a",
        cast("LocalBatches", local),
        cast("PeerCalls", peers),
        cast("rpc.RpcClient", None),
        timeout=1.0,
    )
    return channel, local, peers


def test_it_is_a_replica_channel() -> None:
    channel: ReplicaChannel = node_channel()[0]
    assert channel.me == "a"


@pytest.mark.parametrize(
    "op",
    [
        ReadKey(b"k"),
        MergeKey(b"k", STATE),
        WriteKey(b"k", b"\x03", None),
        MergeMany([(b"k", STATE)]),
        Forget(b"k", b"record"),
    ],
)
def test_an_op_for_this_node_is_queued_for_its_partition_as_it_is(op: Any) -> None:
    channel, local, peers = node_channel()
    channel.send("a", 5, op, TARGET, "tag")
    assert local.queued == {5: [(TARGET, "tag", op)]}
    assert local.queued[5][0][2] is op
    assert peers.replica_ops == peers.coordinate_ops == []


def test_an_op_for_a_peer_goes_to_its_calls_in_wire_form() -> None:
    channel, local, peers = node_channel()
    channel.send("b", 5, ReadKey(b"k"), TARGET, "tag")
    channel.send("c", 5, MergeKey(b"k", STATE), TARGET, "tag2")
    assert peers.replica_ops == [
        ("b", ["read", b"k"], TARGET, "tag"),
        ("c", to_wire(MergeKey(b"k", STATE)), TARGET, "tag2"),
    ]
    assert not local.queued and peers.coordinate_ops == []


def test_a_write_to_coordinate_goes_to_the_coordinate_calls() -> None:
    channel, _, peers = node_channel()
    channel.send("b", 5, Coordinate(b"k", b"\x03", b"ctx", 2), TARGET, 0)
    assert peers.coordinate_ops == [("b", ["write", b"k", b"\x03", b"ctx", 2], TARGET, 0)]
    assert peers.replica_ops == []


def test_one_op_sent_to_many_peers_is_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[Any] = []

    def counting_to_wire(op: Any) -> list[Any]:
        encoded.append(op)
        return to_wire(op)

    monkeypatch.setattr(channel_module, "to_wire", counting_to_wire)
    channel, local, peers = node_channel()
    merge = MergeKey(b"k", STATE)
    channel.send("a", 5, merge, TARGET, "a")  # this node's copy: not encoded at all
    channel.send("b", 5, merge, TARGET, "b")
    channel.send("c", 5, merge, TARGET, "c")
    channel.send_later("d", 5, merge)  # a next owner
    assert encoded == [merge]
    assert local.queued[5] == [(TARGET, "a", merge)]
    forms = [wire for _, wire, _, _ in peers.replica_ops] + [wire for _, wire in peers.later_ops]
    assert all(form is forms[0] for form in forms)
    # Another op, even an equal one, is encoded for itself.
    channel.send("b", 5, MergeKey(b"k", STATE), TARGET, "b")
    assert len(encoded) == 2
    assert peers.replica_ops[-1][1] == forms[0]


def test_a_record_sent_as_stored_to_this_node_is_merged_as_its_state() -> None:
    channel, local, _ = node_channel()
    channel.send("a", 5, MergeRecord(b"k", read_wire_state(encode_state(STATE))), TARGET, 1)
    assert local.queued == {5: [(TARGET, 1, MergeKey(b"k", STATE))]}


def test_a_merge_nobody_waits_for_goes_later_to_a_peer_and_at_once_here() -> None:
    channel, local, peers = node_channel()
    channel.send_later("b", 5, MergeKey(b"k", STATE))
    channel.send_later("a", 5, MergeKey(b"k", STATE))
    assert peers.later_ops == [("b", to_wire(MergeKey(b"k", STATE)))]
    assert local.queued == {5: [(IGNORE_ANSWERS, None, MergeKey(b"k", STATE))]}


def test_misrouted_ops_are_refused() -> None:
    channel, local, peers = node_channel()
    with pytest.raises(TypeError, match="not an op that travels"):
        channel.send("b", 5, WriteKey(b"k", b"\x03", None), TARGET, 0)
    with pytest.raises(TypeError, match="coordinates its own writes"):
        channel.send("a", 5, Coordinate(b"k", b"\x03", None, None), TARGET, 0)
    assert not local.queued and peers.replica_ops == peers.coordinate_ops == []


def test_hints_and_read_repairs() -> None:
    channel, _, _ = node_channel()
    channel.hint(5, b"k", "c")  # no hinted handoff here: nothing kept, nothing fails
    kept: list[tuple[str, int, bytes]] = []
    channel.keep_hint = lambda target, partition, key: kept.append((target, partition, key))
    channel.hint(5, b"k", "c")
    assert kept == [("c", 5, b"k")]
    channel.count_read_repair()
    channel.count_read_repair()
    assert channel.read_repairs == 2
