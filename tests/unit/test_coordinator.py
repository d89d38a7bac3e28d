"""Tests for kvactors.replication.coordinator: quorum reads with read repair, and writes
coordinated here or forwarded to a replica.

The operations only talk to a `ReplicaChannel`; here that is `kvactors.testing.FakeChannel`,
an in-memory recorder: it records every call and the test decides when, and how, each
replica answers (through the target and tag the operation passed). No sockets, actors or
sleeps.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.core.clocks import HlcStamp, VectorClock
from kvactors.core.context import encode_context
from kvactors.core.ops import Coordinate, MergeKey, ReadKey, WriteKey, Written, to_wire
from kvactors.core.versions import (
    EMPTY_STATE,
    KeyState,
    coordinate_write,
    merge_states,
    state_from_wire,
    state_to_wire,
)
from kvactors.errors import (
    InternalError,
    KVActorsError,
    OverloadedError,
    PeerUnreachableError,
    RequestTimeoutError,
    UnavailableError,
)
from kvactors.replication.coordinator import (
    KeyOutcome,
    ReadOperation,
    ReadResult,
    WriteOperation,
    WriteResult,
)
from kvactors.testing import FakeChannel, Sent

KEY = b"user:42"
PARTITION = 7
NODES = ("a", "b", "c")

# -------------------------------------------------------------------------- the fake channel


class Channel(FakeChannel):
    """The shared `FakeChannel`, with what these tests look for in what it recorded."""

    def reads(self) -> dict[str, Sent]:
        """The read request each replica got (at most one each)."""
        found: dict[str, Sent] = {}
        for sent in self.sent:
            if isinstance(sent.op, ReadKey):
                assert sent.replica not in found, f"{sent.replica} was asked to read twice"
                found[sent.replica] = sent
        return found

    def merges(self) -> list[Sent]:
        """Every merge sent, to this node or to a peer."""
        return [sent for sent in self.sent if isinstance(sent.op, MergeKey)]

    def merged_state(self, sent: Sent) -> KeyState:
        """The state a merge carries (as its wire form carries it, for a peer)."""
        assert isinstance(sent.op, MergeKey)
        assert sent.partition == PARTITION
        assert sent.op.key == KEY
        if not sent.local:
            verb, key, wire = to_wire(sent.op)
            assert (verb, key, state_from_wire(wire)) == ("merge", KEY, sent.op.state)
        return sent.op.state


class Outcomes(list[KeyOutcome]):
    """The deliver callback: a list of everything delivered."""

    def __call__(self, outcome: KeyOutcome) -> None:
        self.append(outcome)


def failure(name: str) -> UnavailableError:
    return UnavailableError(f"{name} is down")


# ---------------------------------------------------------------------------------- states


def _write(state: KeyState, node: str, value: bytes | None, wall_ms: int) -> KeyState:
    return coordinate_write(state, node, state.context, value, HlcStamp(wall_ms, 0, node))


ONE = _write(EMPTY_STATE, "a", b"one", 1)
TWO = _write(ONE, "b", b"two", 2)  # read ONE, then wrote over it: supersedes ONE
THREE = coordinate_write(EMPTY_STATE, "c", VectorClock(), b"three", HlcStamp(3, 0, "c"))
# THREE did not see ONE or TWO: siblings with either.
GONE = _write(TWO, "a", None, 4)  # a delete after TWO
STATE_POOL = (EMPTY_STATE, ONE, TWO, THREE, GONE, merge_states(ONE, THREE))


def merge_all(states: list[KeyState]) -> KeyState:
    merged = EMPTY_STATE
    for state in states:
        merged = merge_states(merged, state)
    return merged


def test_the_sample_states_differ() -> None:
    """The read tests rely on these being distinct and on merges telling them apart."""
    assert len(set(STATE_POOL)) == len(STATE_POOL)
    assert merge_states(ONE, TWO) == TWO
    assert merge_states(TWO, THREE) not in (TWO, THREE)
    assert len(merge_states(TWO, THREE).live) == 2


# ----------------------------------------------------------------------------------- reads


def start_read(
    me: str, replicas: tuple[str, ...] = NODES, required: int = 2
) -> tuple[Channel, Outcomes]:
    channel, outcomes = Channel(me), Outcomes()
    ReadOperation(
        channel,
        KEY,
        partition=PARTITION,
        replicas=replicas,
        required=required,
        deliver=outcomes,
    ).start()
    return channel, outcomes


@pytest.mark.parametrize("me", ["a", "b", "c", "x"])
def test_read_asks_every_replica_locally_or_by_peer(me: str) -> None:
    channel, outcomes = start_read(me)
    reads = channel.reads()
    assert set(reads) == set(NODES)
    assert len(channel.sent) == 3
    for name, sent in reads.items():
        assert sent.local == (name == me)
        assert sent.partition == PARTITION
        assert sent.op == ReadKey(KEY)
        assert sent.local or to_wire(sent.op) == ["read", KEY]
    assert outcomes == []
    assert channel.read_repairs == 0


@pytest.mark.parametrize("replicas", [("a",), ("a", "b"), NODES])
def test_read_needing_more_replicas_than_there_are_is_unavailable_at_once(
    replicas: tuple[str, ...],
) -> None:
    channel, outcomes = start_read("a", replicas, required=len(replicas) + 1)
    assert channel.sent == []
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], UnavailableError)


def expected_read(
    replicas: tuple[str, ...],
    required: int,
    events: list[tuple[str, bool]],
    states: dict[str, KeyState],
) -> tuple[int | None, KeyOutcome | None, int | None, dict[str, KeyState]]:
    """What a read must do for `events` (replica, replied?), each replica's first event
    counting: (index of the deciding event, what it delivers (ReadResult, or None for
    unavailable), index of the event after which every replica has answered, the
    repairs due then: replica -> the state it must receive)."""
    first: dict[str, bool] = {}
    decided_at: int | None = None
    delivered: KeyOutcome | None = None
    complete_at: int | None = None
    for index, (name, replied) in enumerate(events):
        if name in first:
            continue
        first[name] = replied
        replies = [states[n] for n in replicas if first.get(n) is True]
        failures = sum(1 for n in replicas if first.get(n) is False)
        if decided_at is None and len(replies) >= required:
            decided_at, delivered = index, ReadResult(merge_all(replies))
        elif decided_at is None and len(replicas) - failures < required:
            decided_at = index
        if len(first) == len(replicas):
            complete_at = index
    everything = merge_all([states[n] for n in replicas if first.get(n) is True])
    repairs = {
        name: everything
        for name in replicas
        if first.get(name) is True and states[name] != everything
    }
    return decided_at, delivered, complete_at, repairs


def play_read(
    me: str,
    replicas: tuple[str, ...],
    required: int,
    events: list[tuple[str, bool]],
    states: dict[str, KeyState],
) -> None:
    """Run a read through `events` and check it against `expected_read` after each one."""
    decided_at, delivered, complete_at, repairs = expected_read(replicas, required, events, states)
    channel, outcomes = start_read(me, replicas, required)
    reads = channel.reads()
    assert set(reads) == set(replicas)
    for index, (name, replied) in enumerate(events):
        if replied:
            reads[name].done(states[name])
        else:
            reads[name].failed(failure(name))
        context = f"after event {index} of {events}"
        if decided_at is None or index < decided_at:
            assert outcomes == [], context
        else:
            assert len(outcomes) == 1, context
            if delivered is None:
                assert isinstance(outcomes[0], UnavailableError), context
            else:
                assert outcomes[0] == delivered, context
        merges = channel.merges()
        if complete_at is None or index < complete_at:
            assert merges == [], context
            assert channel.read_repairs == 0, context
        else:
            got = {sent.replica: channel.merged_state(sent) for sent in merges}
            assert got == repairs, context
            assert len(merges) == len(repairs), context
            assert channel.read_repairs == len(repairs), context
            for sent in merges:
                assert sent.local == (sent.replica == me), context
    # Nothing but the reads and the repairs went anywhere.
    assert len(channel.sent) == len(replicas) + len(repairs)


@pytest.mark.parametrize("required", [1, 2, 3])
@pytest.mark.parametrize("me", ["a", "c", "x"])
def test_read_decides_once_for_every_order_of_answers(required: int, me: str) -> None:
    """All 6 orders x 8 reply/fail patterns of 3 replicas with distinct states."""
    states = {"a": ONE, "b": TWO, "c": THREE}
    for order in itertools.permutations(NODES):
        for pattern in itertools.product((True, False), repeat=3):
            events = list(zip(order, pattern, strict=True))
            play_read(me, NODES, required, events, states)


@st.composite
def read_runs(
    draw: st.DrawFn,
) -> tuple[str, tuple[str, ...], int, list[tuple[str, bool]], dict[str, KeyState]]:
    replicas = draw(st.sampled_from([("a", "b"), NODES]))
    me = draw(st.sampled_from([*replicas, "x"]))
    required = draw(st.integers(1, len(replicas)))
    states = {name: draw(st.sampled_from(STATE_POOL)) for name in replicas}
    # Every replica answers at least once; some answer again (a retrying or confused peer).
    firsts = [(name, draw(st.booleans())) for name in replicas]
    extras = draw(st.lists(st.tuples(st.sampled_from(replicas), st.booleans()), max_size=4))
    events = draw(st.permutations(firsts + extras))
    return me, replicas, required, list(events), states


@given(read_runs())
@settings(max_examples=150)
def test_read_with_repeated_answers_matches_the_model(
    run: tuple[str, tuple[str, ...], int, list[tuple[str, bool]], dict[str, KeyState]],
) -> None:
    """Duplicates, answers after failures and failures after answers change nothing: each
    replica's first answer counts, one outcome is delivered, repair happens once."""
    play_read(*run)


def test_read_delivers_the_merge_of_the_replies_so_far() -> None:
    channel, outcomes = start_read("a", required=2)
    reads = channel.reads()
    reads["c"].done(THREE)
    assert outcomes == []
    reads["b"].done(TWO)
    assert outcomes == [ReadResult(merge_states(TWO, THREE))]
    reads["a"].done(ONE)  # late and already covered by TWO: nothing new delivered
    assert len(outcomes) == 1


def test_read_repair_waits_for_every_replica() -> None:
    channel, outcomes = start_read("a", required=1)
    reads = channel.reads()
    reads["a"].done(ONE)
    assert outcomes == [ReadResult(ONE)]
    reads["b"].done(TWO)
    assert channel.merges() == []
    reads["c"].failed(failure("c"))
    # a was stale; b held everything; c failed, so nothing is known about it.
    assert [(sent.replica, channel.merged_state(sent)) for sent in channel.merges()] == [("a", TWO)]
    assert channel.read_repairs == 1


def test_read_repairs_every_stale_replica_with_one_merge_of_the_merged_state() -> None:
    channel, _ = start_read("b", required=3)
    reads = channel.reads()
    reads["a"].done(ONE)
    reads["b"].done(ONE)
    merged = merge_states(ONE, THREE)
    reads["c"].done(merged)  # up to date: no repair for c
    by_name = {sent.replica: sent for sent in channel.merges()}
    assert set(by_name) == {"a", "b"}
    local, remote = by_name["b"], by_name["a"]
    assert local.local
    assert local.partition == remote.partition == PARTITION
    assert local.op == MergeKey(KEY, merged)
    assert not remote.local
    assert remote.op is local.op  # one op: a node encodes it once for all its peers
    assert to_wire(remote.op) == ["merge", KEY, state_to_wire(merged)]
    assert channel.read_repairs == 2


def test_read_without_disagreement_repairs_nothing() -> None:
    channel, outcomes = start_read("a", required=2)
    for sent in channel.reads().values():
        sent.done(TWO)
    assert outcomes == [ReadResult(TWO)]
    assert channel.merges() == []
    assert channel.read_repairs == 0


def test_read_of_a_key_nobody_has_repairs_nothing() -> None:
    channel, outcomes = start_read("a", required=3)
    for sent in channel.reads().values():
        sent.done(EMPTY_STATE)
    assert outcomes == [ReadResult(EMPTY_STATE)]
    assert channel.merges() == []


def test_read_repair_uses_answers_that_came_after_the_decision() -> None:
    channel, outcomes = start_read("x", required=2)
    reads = channel.reads()
    reads["a"].done(ONE)
    reads["b"].done(ONE)
    assert outcomes == [ReadResult(ONE)]
    reads["c"].done(GONE)  # late, and newer than what the client got
    assert outcomes == [ReadResult(ONE)]
    repaired = {sent.replica: channel.merged_state(sent) for sent in channel.merges()}
    assert repaired == {"a": GONE, "b": GONE}


def test_read_repair_happens_once_when_a_replica_answers_twice() -> None:
    channel, outcomes = start_read("a", required=2)
    reads = channel.reads()
    reads["a"].done(ONE)
    reads["b"].done(TWO)
    reads["c"].done(TWO)
    assert len(channel.merges()) == 1
    reads["c"].done(THREE)  # a second answer: ignored
    reads["a"].done(ONE)
    reads["b"].failed(failure("b"))
    assert len(channel.merges()) == 1
    assert channel.read_repairs == 1
    assert outcomes == [ReadResult(TWO)]


def test_read_unavailable_once_and_still_repairs_what_answered() -> None:
    channel, outcomes = start_read("a", required=3)
    reads = channel.reads()
    reads["b"].failed(failure("b"))
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], UnavailableError)
    assert "b" in str(outcomes[0])
    reads["a"].done(ONE)
    assert channel.merges() == []
    reads["c"].done(TWO)
    assert len(outcomes) == 1
    assert {sent.replica: channel.merged_state(sent) for sent in channel.merges()} == {"a": TWO}


def test_read_repair_answers_are_ignored() -> None:
    channel, outcomes = start_read("a", required=3)
    reads = channel.reads()
    reads["a"].done(ONE)
    reads["b"].done(ONE)
    reads["c"].done(TWO)
    repairs = channel.merges()
    assert len(repairs) == 2
    repairs[0].done(None)
    repairs[1].failed(failure("b"))
    assert outcomes == [ReadResult(TWO)]
    assert len(channel.sent) == 5


@pytest.mark.parametrize("me", ["a", "x"])
def test_read_of_a_single_replica_delivers_its_state(me: str) -> None:
    channel, outcomes = start_read(me, ("a",), required=1)
    (sent,) = channel.sent
    assert sent.local == (me == "a")
    sent.done(TWO)
    assert outcomes == [ReadResult(TWO)]
    assert channel.merges() == []


def test_read_of_a_single_replica_that_fails_is_unavailable() -> None:
    channel, outcomes = start_read("x", ("a",), required=1)
    channel.sent[0].failed(failure("a"))
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], UnavailableError)


def test_read_of_a_single_replica_delivers_once_when_it_answers_twice() -> None:
    """Like the multi-replica reads, a second answer from the one replica must not give the
    client a second outcome (the QuorumTracker documents such duplicates)."""
    channel, outcomes = start_read("x", ("a",), required=1)
    channel.sent[0].done(ONE)
    channel.sent[0].done(TWO)
    assert outcomes == [ReadResult(ONE)]


def test_read_of_a_single_replica_answering_after_failing_delivers_once() -> None:
    channel, outcomes = start_read("x", ("a",), required=1)
    channel.sent[0].failed(failure("a"))
    channel.sent[0].done(ONE)
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], UnavailableError)


# ------------------------------------------------------------------- writes coordinated here

WRITTEN = Written(_write(ONE, "a", b"new", 5), existed=True)


def start_write(
    me: str,
    replicas: tuple[str, ...] = NODES,
    required: int = 2,
    *,
    value: bytes | None = b"new",
    context: tuple[VectorClock, bytes] | None = None,
    requested_w: int | None = None,
    coordinate_here: bool = False,
    hint_for: tuple[str, ...] = (),
    next_owners: tuple[str, ...] = (),
) -> tuple[Channel, Outcomes]:
    channel, outcomes = Channel(me), Outcomes()
    WriteOperation(
        channel,
        KEY,
        partition=PARTITION,
        value=value,
        context=context,
        replicas=replicas,
        required=required,
        deliver=outcomes,
        requested_w=requested_w,
        coordinate_here=coordinate_here,
        hint_for=hint_for,
        next_owners=next_owners,
    ).start()
    return channel, outcomes


def peer_merges(channel: Channel) -> dict[str, Sent]:
    merges = channel.merges()
    found = {sent.replica: sent for sent in merges}
    assert len(found) == len(merges), "a replica got the write twice"
    return found


@pytest.mark.parametrize("me", NODES)
@pytest.mark.parametrize(
    ("value", "context"),
    [
        (b"new", None),
        (None, None),
        (b"new", (ONE.context, ONE.encoded_context())),
        (None, (TWO.context, TWO.encoded_context())),
    ],
)
def test_write_starts_with_the_local_write_alone(
    me: str, value: bytes | None, context: tuple[VectorClock, bytes] | None
) -> None:
    channel, outcomes = start_write(me, value=value, context=context)
    (sent,) = channel.sent
    assert sent.local
    assert sent.partition == PARTITION
    assert sent.op == WriteKey(KEY, value, None if context is None else context[0])
    assert outcomes == []


@pytest.mark.parametrize("required", [1, 2])
def test_a_write_reaches_the_next_owners_unhurried_and_does_not_wait_for_them(
    required: int,
) -> None:
    channel, outcomes = start_write("a", required=required, next_owners=("d", "e"))
    (local,) = channel.sent
    local.done(WRITTEN)
    # Sent in bulk (`send_later`), the very merge the replicas get, to each next owner.
    merge = MergeKey(KEY, WRITTEN.state)
    assert channel.later == [("d", PARTITION, merge), ("e", PARTITION, merge)]
    assert {sent.replica for sent in channel.merges()} == {"b", "c"}  # the replicas, as usual
    assert all(op is channel.merges()[0].op for _, _, op in channel.later)
    if required == 2:
        assert outcomes == []
        peer_merges(channel)["b"].done(None)
    # The replicas W needs decide: no answer from a next owner is awaited.
    assert outcomes == [WriteResult(True, len(WRITTEN.state.live_values()))]


@pytest.mark.parametrize(
    ("me", "replicas"), [("a", ("a", "b")), ("b", ("a", "b")), *[(me, NODES) for me in NODES]]
)
def test_write_sends_the_written_state_to_the_other_replicas(
    me: str, replicas: tuple[str, ...]
) -> None:
    channel, outcomes = start_write(me, replicas, required=len(replicas))
    (local,) = channel.sent
    local.done(WRITTEN)
    merges = peer_merges(channel)
    assert set(merges) == set(replicas) - {me}
    ops = {id(sent.op) for sent in merges.values()}
    assert len(ops) == 1  # one op for every peer: a node encodes it once
    for sent in merges.values():
        assert not sent.local
        assert sent.partition == PARTITION
        assert sent.op == MergeKey(KEY, WRITTEN.state)
        assert to_wire(sent.op) == ["merge", KEY, state_to_wire(WRITTEN.state)]
    assert len(channel.sent) == len(replicas)
    assert outcomes == []
    for sent in merges.values():
        sent.done(None)
    assert outcomes == [WriteResult(True, 1)]


def expected_write(required: int, events: list[tuple[str, bool]]) -> tuple[int, bool]:
    """(index of the deciding event, succeeded?); -1 is the local write itself."""
    acks, failures = 1, 0
    if acks >= required:
        return -1, True
    for index, (_, acked) in enumerate(events):
        acks += acked
        failures += not acked
        if acks >= required:
            return index, True
        if 3 - failures < required:
            return index, False
    raise AssertionError("three replicas always decide")


@pytest.mark.parametrize("required", [1, 2, 3])
@pytest.mark.parametrize("me", ["a", "b"])
def test_write_decides_once_for_every_order_of_peer_answers(required: int, me: str) -> None:
    peers = [name for name in NODES if name != me]
    for order in itertools.permutations(peers):
        for pattern in itertools.product((True, False), repeat=2):
            events = list(zip(order, pattern, strict=True))
            decided_at, succeeded = expected_write(required, events)
            channel, outcomes = start_write(me, required=required)
            channel.sent[0].done(WRITTEN)
            merges = peer_merges(channel)
            for index in range(-1, len(events)):
                if index >= 0:
                    name, acked = events[index]
                    if acked:
                        merges[name].done(None)
                    else:
                        merges[name].failed(failure(name))
                context = f"required={required} events={events} after {index}"
                if index < decided_at:
                    assert outcomes == [], context
                elif succeeded:
                    assert outcomes == [WriteResult(True, 1)], context
                else:
                    assert len(outcomes) == 1, context
                    assert isinstance(outcomes[0], UnavailableError), context
            assert len(channel.sent) == 3


def test_write_with_w1_delivers_right_after_the_local_write() -> None:
    channel, outcomes = start_write("b", required=1)
    channel.sent[0].done(WRITTEN)
    assert outcomes == [WriteResult(True, 1)]
    merges = peer_merges(channel)
    assert set(merges) == {"a", "c"}  # replication still goes out
    merges["a"].failed(failure("a"))
    merges["c"].failed(failure("c"))
    assert outcomes == [WriteResult(True, 1)]


def test_write_to_a_single_replica_here_needs_no_peer() -> None:
    channel, outcomes = start_write("a", ("a",), required=1)
    channel.sent[0].done(WRITTEN)
    assert outcomes == [WriteResult(True, 1)]
    assert len(channel.sent) == 1


def test_write_fails_when_too_many_peers_fail() -> None:
    channel, outcomes = start_write("a", required=2)
    channel.sent[0].done(WRITTEN)
    merges = peer_merges(channel)
    merges["b"].failed(failure("b"))
    assert outcomes == []
    merges["c"].failed(RequestTimeoutError("c timed out"))
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], UnavailableError)
    assert "timeout" in str(outcomes[0])
    merges["b"].done(None)  # a late, confused answer changes nothing
    assert len(outcomes) == 1


def test_write_keeps_a_hint_for_each_peer_that_fails_to_take_it() -> None:
    channel, outcomes = start_write("a", required=2)
    channel.sent[0].done(WRITTEN)
    merges = peer_merges(channel)
    merges["b"].done(None)
    assert outcomes == [WriteResult(True, 1)]
    assert channel.hints == []
    merges["c"].failed(RequestTimeoutError("c timed out"))  # after the reply, still hinted
    assert channel.hints == [(PARTITION, KEY, "c")]


def test_write_keeps_hints_for_dead_replicas_once_made_here() -> None:
    channel, _outcomes = start_write("a", ("a", "b"), required=2, hint_for=("d",))
    assert channel.hints == []  # nothing made yet: nothing to hand over
    channel.sent[0].done(WRITTEN)
    assert channel.hints == [(PARTITION, KEY, "d")]
    assert set(peer_merges(channel)) == {"b"}


def test_write_whose_local_write_fails_keeps_no_hint() -> None:
    channel, outcomes = start_write("a", ("a", "b"), required=2, hint_for=("d",))
    channel.sent[0].failed(failure("a"))
    assert channel.hints == []
    assert len(outcomes) == 1


def test_write_acknowledged_twice_by_one_peer_counts_once() -> None:
    channel, outcomes = start_write("a", required=3)
    channel.sent[0].done(WRITTEN)
    merges = peer_merges(channel)
    merges["b"].done(None)
    merges["b"].done(None)
    assert outcomes == []
    merges["c"].done(None)
    assert outcomes == [WriteResult(True, 1)]


def test_write_local_answer_repeated_is_not_replicated_twice() -> None:
    channel, outcomes = start_write("a", required=2)
    channel.sent[0].done(WRITTEN)
    channel.sent[0].done(WRITTEN)
    assert len(channel.merges()) == 2
    assert outcomes == []


@pytest.mark.parametrize(
    "error", [InternalError("disk full"), OverloadedError("busy"), UnavailableError("stopping")]
)
def test_write_whose_local_write_fails_delivers_that_error_and_sends_nothing(
    error: KVActorsError,
) -> None:
    channel, outcomes = start_write("b", required=1)
    channel.sent[0].failed(error)
    assert len(outcomes) == 1
    assert outcomes[0] is error
    assert len(channel.sent) == 1


def test_write_delivers_once_when_the_local_store_answers_after_failing() -> None:
    channel, outcomes = start_write("a", required=1)
    error = InternalError("disk full")
    channel.sent[0].failed(error)
    channel.sent[0].done(WRITTEN)  # a confused second answer
    assert outcomes == [error]


@pytest.mark.parametrize("replicas", [("a",), NODES])
def test_write_needing_more_replicas_than_there_are_is_unavailable_at_once(
    replicas: tuple[str, ...],
) -> None:
    channel, outcomes = start_write("a", replicas, required=len(replicas) + 1)
    assert channel.sent == []
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], UnavailableError)


def _siblings() -> list[tuple[Written, WriteResult]]:
    concurrent = merge_states(_write(EMPTY_STATE, "a", b"x", 1), _write(EMPTY_STATE, "b", b"y", 2))
    same_value = merge_states(_write(EMPTY_STATE, "a", b"x", 1), _write(EMPTY_STATE, "b", b"x", 2))
    deleted = _write(ONE, "a", None, 3)
    return [
        (Written(ONE, existed=False), WriteResult(False, 1)),
        (Written(concurrent, existed=True), WriteResult(True, 2)),
        (Written(same_value, existed=True), WriteResult(True, 1)),
        (Written(deleted, existed=True), WriteResult(True, 0)),
    ]


@pytest.mark.parametrize(("written", "result"), _siblings())
@pytest.mark.parametrize("replicas", [("a",), NODES])
def test_write_reports_existed_and_distinct_live_siblings(
    written: Written, result: WriteResult, replicas: tuple[str, ...]
) -> None:
    channel, outcomes = start_write("a", replicas, required=len(replicas))
    channel.sent[0].done(written)
    for sent in channel.merges():
        sent.done(None)
    assert outcomes == [result]
    assert len(written.state.live_values()) == result.siblings


# ------------------------------------------------------------ coordinating for another node


def test_write_coordinated_here_for_a_peer_replaces_the_last_replica() -> None:
    channel, outcomes = start_write("x", NODES, required=3, coordinate_here=True)
    (local,) = channel.sent
    assert local.local
    assert local.op == WriteKey(KEY, b"new", None)
    local.done(WRITTEN)
    merges = peer_merges(channel)
    assert set(merges) == {"a", "b"}
    assert channel.reads() == {}
    assert not any(isinstance(sent.op, Coordinate) for sent in channel.sent)
    merges["a"].done(None)
    assert outcomes == []
    merges["b"].done(None)
    assert outcomes == [WriteResult(True, 1)]


def test_write_coordinated_here_counts_only_its_own_replicas() -> None:
    channel, outcomes = start_write("x", NODES, required=2, coordinate_here=True)
    channel.sent[0].done(WRITTEN)
    merges = peer_merges(channel)
    merges["a"].failed(failure("a"))
    assert outcomes == []
    merges["b"].failed(failure("b"))
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], UnavailableError)


def test_write_coordinated_here_by_a_replica_is_an_ordinary_write() -> None:
    channel, outcomes = start_write("c", NODES, required=3, coordinate_here=True)
    channel.sent[0].done(WRITTEN)
    merges = peer_merges(channel)
    assert set(merges) == {"a", "b"}
    for sent in merges.values():
        sent.done(None)
    assert outcomes == [WriteResult(True, 1)]


# ------------------------------------------------------------------------- forwarded writes

CONTEXT = (TWO.context, TWO.encoded_context())


def test_forwarded_write_goes_to_the_first_replica_whole() -> None:
    channel, outcomes = start_write("x", context=CONTEXT, requested_w=3, value=b"v")
    (sent,) = channel.sent
    assert sent.replica == "a"
    assert not sent.local
    assert sent.op == Coordinate(KEY, b"v", encode_context(TWO.context), 3)
    assert to_wire(sent.op) == ["write", KEY, b"v", encode_context(TWO.context), 3]
    assert outcomes == []


def test_forwarded_delete_without_context_or_w() -> None:
    channel, _ = start_write("x", value=None)
    assert channel.sent[0].op == Coordinate(KEY, None, None, None)
    assert to_wire(channel.sent[0].op) == ["write", KEY, None, None, None]


@pytest.mark.parametrize(
    ("answer", "result"),
    [([True, 1], WriteResult(True, 1)), ((False, 2), WriteResult(False, 2))],
)
def test_forwarded_write_delivers_the_coordinators_answer(answer: Any, result: WriteResult) -> None:
    channel, outcomes = start_write("x")
    channel.sent[0].done(answer)
    assert outcomes == [result]
    assert len(channel.sent) == 1


def test_forwarded_write_delivers_once_when_answered_twice() -> None:
    channel, outcomes = start_write("x")
    channel.sent[0].done([True, 1])
    channel.sent[0].done([False, 3])
    assert outcomes == [WriteResult(True, 1)]


@pytest.mark.parametrize(
    "answer",
    [None, "ok", [], [True], [True, 1, 2], [1, 1], [True, "1"], [True, True], {"existed": True}],
)
def test_forwarded_write_with_a_malformed_answer_is_an_internal_error(answer: Any) -> None:
    channel, outcomes = start_write("x")
    channel.sent[0].done(answer)
    assert len(outcomes) == 1
    assert type(outcomes[0]) is InternalError
    assert len(channel.sent) == 1


def test_forwarded_write_moves_on_from_an_unreachable_replica() -> None:
    channel, outcomes = start_write("x", context=CONTEXT, requested_w=2)
    channel.sent[0].failed(PeerUnreachableError("a is down"))
    assert [sent.replica for sent in channel.sent] == ["a", "b"]
    assert isinstance(channel.sent[1].op, Coordinate)
    assert channel.sent[1].op == channel.sent[0].op
    assert outcomes == []
    channel.sent[1].done([False, 1])
    assert outcomes == [WriteResult(False, 1)]
    assert len(channel.sent) == 2


def test_forwarded_write_with_every_replica_unreachable_delivers_the_last_error() -> None:
    channel, outcomes = start_write("x")
    errors = [PeerUnreachableError(f"{name} is down") for name in NODES]
    for index, error in enumerate(errors):
        assert len(channel.sent) == index + 1
        assert channel.sent[index].replica == NODES[index]
        channel.sent[index].failed(error)
    assert outcomes == [errors[-1]]
    assert len(channel.sent) == 3


@pytest.mark.parametrize(
    "error",
    [RequestTimeoutError("a took too long"), UnavailableError("a is stopping"), InternalError()],
)
def test_forwarded_write_that_may_have_landed_is_not_tried_elsewhere(
    error: KVActorsError,
) -> None:
    channel, outcomes = start_write("x")
    channel.sent[0].failed(error)
    assert len(outcomes) == 1
    assert outcomes[0] is error
    assert len(channel.sent) == 1


def test_forwarded_write_needing_more_replicas_than_there_are_is_unavailable_at_once() -> None:
    channel, outcomes = start_write("x", ("a", "b"), required=3)
    assert channel.sent == []
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], UnavailableError)


def test_forwarded_write_ignores_a_repeated_failure_of_an_attempt_already_retried() -> None:
    """The tag of each attempt says which one failed: a second failure report for the
    first attempt must not skip the second replica, which still has the write."""
    channel, outcomes = start_write("x")
    first = channel.sent[0]
    first.failed(PeerUnreachableError("a is down"))
    assert [sent.replica for sent in channel.sent] == ["a", "b"]
    first.failed(PeerUnreachableError("a is down"))  # reported again
    assert [sent.replica for sent in channel.sent] == ["a", "b"]
    assert outcomes == []
    channel.sent[1].done([True, 1])
    assert outcomes == [WriteResult(True, 1)]
