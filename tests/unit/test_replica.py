"""Tests for kvactors.storage.replica: a replica's key-value semantics over a table, driven
directly (no actors) with a fake wall clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.core.clocks import HlcStamp, VectorClock
from kvactors.core.context import decode_context
from kvactors.core.ops import (
    Delete,
    Forget,
    Get,
    MergeKey,
    MergeMany,
    Put,
    ReadKey,
    ReadWinner,
    StoreOp,
    WriteKey,
    Written,
)
from kvactors.core.versions import (
    EMPTY_STATE,
    KeyState,
    blind_write,
    coordinate_write,
    merge_states,
    state_from_wire,
    state_to_wire,
)
from kvactors.storage.memory import MemoryTable
from kvactors.storage.records import decode_state, encode_state
from kvactors.storage.replica import Replica
from kvactors.storage.tables import Write
from kvactors.testing import FakeClock

START = 1_700_000_000.0  # a realistic wall clock, in seconds
GRACE = 60.0


class CountingTable(MemoryTable):
    """A MemoryTable that remembers every transaction it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.transactions: list[list[Write]] = []

    def apply(self, writes: Sequence[Write]) -> None:
        self.transactions.append(list(writes))
        super().apply(writes)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def table() -> CountingTable:
    return CountingTable()


@pytest.fixture
def replica(table: CountingTable, clock: FakeClock) -> Replica:
    return Replica(table, node="a", wall_clock=clock, tombstone_grace=GRACE)


def one(replica: Replica, op: StoreOp) -> Any:
    """The result of `op` applied alone."""
    return replica.apply([op])[0][0]


def values(state: KeyState) -> list[bytes | None]:
    return sorted((v.value for v in state.versions), key=lambda value: value or b"")


def elsewhere(value: bytes, context: VectorClock = EMPTY_STATE.context) -> KeyState:
    """A version written through another replica that had seen only `context`."""
    return coordinate_write(EMPTY_STATE, "peer", context, value, HlcStamp(1, 0, "peer"))


# ------------------------------------------------------------------------------ writes


def test_a_write_without_context_supersedes_everything_held(replica: Replica) -> None:
    one(replica, Put(b"k", b"v1"))
    one(replica, MergeKey(b"k", elsewhere(b"concurrent")))
    assert values(one(replica, ReadKey(b"k"))) == [b"concurrent", b"v1"]

    written = one(replica, WriteKey(b"k", b"v2", None))
    assert isinstance(written, Written) and written.existed
    assert values(written.state) == [b"v2"]
    assert one(replica, ReadKey(b"k")) == written.state
    one(replica, Put(b"k", b"v3"))
    assert values(one(replica, ReadKey(b"k"))) == [b"v3"]


def test_a_write_with_the_context_read_supersedes_it_a_stale_one_makes_siblings(
    replica: Replica,
) -> None:
    first = one(replica, WriteKey(b"k", b"v1", None)).state
    read = first.context
    assert values(one(replica, WriteKey(b"k", b"v2", read)).state) == [b"v2"]
    # Another client read the same version and writes without having seen v2.
    state = one(replica, WriteKey(b"k", b"v3", read)).state
    assert values(state) == [b"v2", b"v3"]
    # A write with the context of both siblings resolves them.
    assert values(one(replica, WriteKey(b"k", b"v4", state.context)).state) == [b"v4"]


def test_a_blind_write_from_the_record_alone_makes_what_the_full_path_makes(
    clock: FakeClock,
) -> None:
    # The same history in two tables; one replica writes to an untouched key (from the
    # record's context only), the other after reading the key in the same batch.
    fast = Replica(MemoryTable(), node="a", wall_clock=clock)
    full = Replica(MemoryTable(), node="a", wall_clock=clock)
    for replica in (fast, full):
        replica.apply([Put(b"k", b"v1"), MergeKey(b"k", elsewhere(b"concurrent"))])
    clock.advance(1)
    fast_written = one(fast, WriteKey(b"k", b"v2", None))
    full_written = full.apply([ReadKey(b"k"), WriteKey(b"k", b"v2", None)])[0][1]
    assert fast_written == full_written
    assert fast_written.state.context == full_written.state.context


def test_delete_writes_a_tombstone_and_says_whether_a_value_was_there(
    replica: Replica,
) -> None:
    assert one(replica, Delete(b"missing")) is False
    one(replica, Put(b"k", b"v"))
    assert one(replica, Delete(b"k")) is True
    assert one(replica, Delete(b"k")) is False
    assert one(replica, Get(b"k")) is None
    assert values(one(replica, ReadKey(b"k"))) == [None]  # a tombstone, not nothing


def test_a_restarted_replica_stamps_after_what_the_key_has_seen(
    table: CountingTable, clock: FakeClock
) -> None:
    # A fresh replica over the same table, with a wall clock ten seconds behind.
    before = Replica(table, node="a", wall_clock=clock)
    one(before, Put(b"k", b"old"))
    behind = Replica(table, node="a", wall_clock=lambda: START - 10)
    state = one(behind, WriteKey(b"k", b"new", EMPTY_STATE.context)).state
    assert values(state) == [b"new", b"old"]  # siblings: it had seen nothing
    assert state.winner is not None and state.winner.value == b"new"


def test_dots_are_never_below_the_clock_reading(replica: Replica, clock: FakeClock) -> None:
    floor = int(START * 1000) << 10
    put = one(replica, WriteKey(b"k", b"v", None)).state
    assert put.versions[0].dot.counter >= floor
    clock.advance(1)
    superseding = one(replica, WriteKey(b"k", b"w", put.context)).state
    assert superseding.versions[0].dot.counter >= (int((START + 1) * 1000) << 10)


def test_a_key_written_again_after_its_purge_is_not_hidden_by_a_lagging_replica(
    replica: Replica, clock: FakeClock
) -> None:
    # Riak's kv679: the lagging replica still holds the tombstone, whose obsolete clock
    # covers the dots the key had; a rewrite after the purge must get a dot above them.
    lagging = Replica(MemoryTable(), node="b", wall_clock=clock, tombstone_grace=GRACE)
    one(replica, Put(b"k", b"v1"))
    tombstone = one(replica, WriteKey(b"k", None, None)).state
    one(lagging, MergeKey(b"k", tombstone))
    clock.advance(GRACE)
    assert one(replica, ReadKey(b"k")) == EMPTY_STATE  # purged here, not there yet

    rewritten = one(replica, WriteKey(b"k", b"v2", None)).state
    one(lagging, MergeKey(b"k", rewritten))
    assert one(lagging, Get(b"k")) == b"v2"


# ------------------------------------------------------------------------------ merges


def test_merge_joins_a_concurrent_state_once_and_never_rewrites_for_nothing(
    replica: Replica, table: CountingTable
) -> None:
    one(replica, Put(b"k", b"here"))
    older = one(replica, ReadKey(b"k"))
    there = elsewhere(b"there")
    assert one(replica, MergeKey(b"k", there)) is None
    merged = one(replica, ReadKey(b"k"))
    assert values(merged) == [b"here", b"there"]
    transactions = len(table.transactions)

    # The same state again, or one already superseded: nothing new, nothing written.
    assert replica.apply([MergeKey(b"k", there), MergeKey(b"k", older)]) == ([None, None], [])
    assert one(replica, MergeMany([(b"k", there), (b"k", merged)])) is None
    assert len(table.transactions) == transactions
    assert one(replica, ReadKey(b"k")) == merged


def test_a_merge_of_a_write_over_all_that_is_held_stores_it_as_it_came(
    replica: Replica, table: CountingTable
) -> None:
    one(replica, Put(b"k", b"here"))
    held = one(replica, ReadKey(b"k"))
    # Replication's usual merge: a peer's write over the context of this replica's state.
    later = blind_write(held.context, "peer", b"there", HlcStamp(2, 0, "peer"))
    transactions = len(table.transactions)
    assert one(replica, MergeKey(b"k", state_from_wire(state_to_wire(later)))) is None
    assert one(replica, ReadKey(b"k")) == later
    assert table.transactions[transactions:] == [[(b"k", encode_state(later))]]
    # Sent again: nothing new, nothing written.
    assert replica.apply([MergeKey(b"k", later)]) == ([None], [])


@st.composite
def related_states(draw: st.DrawFn) -> tuple[KeyState, KeyState]:
    """Two states of one key from a history of writes (each over some earlier state's
    context) and merges: one may have seen all the other holds, or part, or nothing."""
    history = [EMPTY_STATE]
    for index in range(draw(st.integers(1, 6))):
        base = draw(st.sampled_from(history))
        if draw(st.booleans()):
            node = draw(st.sampled_from(("a", "b", "c")))
            at = HlcStamp(index + 1, 0, node)
            history.append(blind_write(base.context, node, b"v%d" % index, at, 1))
        else:
            history.append(merge_states(base, draw(st.sampled_from(history))))
    return draw(st.sampled_from(history)), draw(st.sampled_from(history))


@settings(max_examples=80, deadline=None)
@given(related_states())
def test_a_merge_stores_the_join_and_writes_only_what_changed(
    pair: tuple[KeyState, KeyState],
) -> None:
    held, incoming = pair
    table = MemoryTable()
    if not held.is_empty:
        table.apply([(b"k", encode_state(held))])
    replica = Replica(table, node="a", wall_clock=FakeClock(START), tombstone_grace=GRACE)
    # As a peer's message brings it: decoded, nothing computed yet.
    results, written = replica.apply([MergeKey(b"k", state_from_wire(state_to_wire(incoming)))])
    joined = merge_states(held, incoming)
    assert results == [None]
    assert written == ([] if joined == held else [(b"k", encode_state(joined))])
    assert one(replica, ReadKey(b"k")) == joined


def test_merge_many_merges_each_key(replica: Replica) -> None:
    one(replica, Put(b"held", b"here"))
    there = elsewhere(b"there")
    one(replica, MergeMany([(b"held", there), (b"new", there)]))
    assert values(one(replica, ReadKey(b"held"))) == [b"here", b"there"]
    assert one(replica, ReadKey(b"new")) == there


# ------------------------------------------------------------------------------ forget


def test_forget_deletes_only_an_untouched_record_that_still_matches(
    replica: Replica, table: CountingTable
) -> None:
    one(replica, Put(b"k", b"v1"))
    record = table.get(b"k")
    assert record is not None
    # Touched by this batch first: kept, though the record matched when the batch began.
    assert replica.apply([Put(b"k", b"v2"), Forget(b"k", record)])[0] == [None, False]
    assert one(replica, Forget(b"k", record)) is False  # changed since: kept
    assert one(replica, Get(b"k")) == b"v2"

    current = table.get(b"k")
    assert current is not None
    assert one(replica, Forget(b"k", current)) is True
    assert table.get(b"k") is None
    assert one(replica, ReadKey(b"k")) == EMPTY_STATE


# ------------------------------------------------------------------------------ tombstones


def test_tombstones_are_kept_through_the_grace_period_then_purged(
    replica: Replica, table: CountingTable, clock: FakeClock
) -> None:
    one(replica, Put(b"k", b"v"))
    one(replica, Delete(b"k"))
    clock.advance(GRACE - 1)
    assert values(one(replica, ReadKey(b"k"))) == [None]
    assert table.get(b"k") is not None

    clock.advance(1)
    results, written = replica.apply([ReadKey(b"k")])
    assert results == [EMPTY_STATE]
    assert written == [(b"k", None)]
    assert table.get(b"k") is None and len(table) == 0


def test_a_tombstone_beside_a_live_sibling_is_kept(
    replica: Replica, table: CountingTable, clock: FakeClock
) -> None:
    one(replica, Put(b"k", b"v"))
    deleted = one(replica, WriteKey(b"k", None, None)).state
    one(replica, MergeKey(b"k", elsewhere(b"concurrent")))  # a live sibling of the delete
    clock.advance(GRACE * 2)
    state = one(replica, ReadKey(b"k"))
    assert values(state) == [None, b"concurrent"]
    assert deleted.versions[0] in state.versions


# ------------------------------------------------------------------------------ batches


def test_reads_within_a_batch_see_the_batch_s_writes(replica: Replica) -> None:
    results, _ = replica.apply(
        [
            Get(b"k"),
            Put(b"k", b"v1"),
            Get(b"k"),
            ReadWinner(b"k"),
            WriteKey(b"k", b"v2", None),
            ReadKey(b"k"),
            Delete(b"k"),
            Get(b"k"),
        ]
    )
    assert results[0] is None and results[2] == b"v1"
    value, context = results[3]
    assert value == b"v1" and decode_context(context).counter("a") > 0
    assert values(results[5]) == [b"v2"]
    assert results[6] is True and results[7] is None


def test_a_batch_writes_each_changed_key_once_in_one_transaction(
    replica: Replica, table: CountingTable
) -> None:
    one(replica, Put(b"untouched", b"x"))
    table.transactions.clear()

    results, written = replica.apply(
        [
            Put(b"a", b"1"),
            Put(b"a", b"2"),
            WriteKey(b"b", b"1", None),
            Get(b"untouched"),
            ReadKey(b"missing"),
            Delete(b"b"),
            Put(b"a", b"3"),
        ]
    )
    assert len(table.transactions) == 1
    assert table.transactions[0] == written
    assert sorted(key for key, _ in written) == [b"a", b"b"]
    records = dict(written)
    assert records[b"a"] is not None and values(decode_state(records[b"a"])) == [b"3"]
    assert records[b"b"] is not None and values(decode_state(records[b"b"])) == [None]
    assert results[3] == b"x"


def test_a_batch_of_reads_writes_nothing(replica: Replica, table: CountingTable) -> None:
    one(replica, Put(b"k", b"v"))
    table.transactions.clear()
    results, written = replica.apply([Get(b"k"), ReadKey(b"k"), ReadWinner(b"nothing")])
    assert results[0] == b"v" and written == [] and table.transactions == []


def test_an_unknown_operation_is_refused(replica: Replica) -> None:
    with pytest.raises(TypeError, match="not a store operation"):
        replica.apply(["get k"])  # type: ignore[list-item]
