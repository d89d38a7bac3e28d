"""Bounded input: what a client's context or a peer's state may hold, and what a client
write may leave on a key (docs/security.md, "Bounded input").

Pure: the decoders (`client_context`, `check_state_bounds`, the `store` call's
`store_ops`) and a `Replica` over a `MemoryTable` with a fake wall clock. Each bound is
tried at its limit, just under and just over; the attacks of issue 16 (6, 7, 8) are
replayed against a replica; two Hypothesis fuzzes of 2,000 examples feed contexts and
peer states to the decoders and then to the replica.
"""

from __future__ import annotations

import contextlib
import logging
from types import NoneType
from typing import Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.config import NodeConfig
from kvactors.core.clocks import (
    COUNTER_MARGIN,
    MAX_COUNTER,
    MAX_STAMP_LOGICAL,
    Dot,
    HlcStamp,
    VectorClock,
    counter_ceiling,
    dot_floor,
)
from kvactors.core.context import (
    MAX_CLIENT_COUNTER,
    MAX_CONTEXT_ENTRIES,
    client_context,
    decode_context,
    encode_context,
)
from kvactors.core.ops import MergeKey, MergeMany, Put, ReadKey, StoreOp, WriteKey, Written
from kvactors.core.versions import (
    EMPTY_STATE,
    KeyState,
    Version,
    check_state_bounds,
    state_from_wire,
    state_to_wire,
)
from kvactors.errors import BadRequestError, KVActorsError
from kvactors.net.rpc import Call, store_ops
from kvactors.node.local_batches import LocalBatches
from kvactors.storage.memory import MemoryTable
from kvactors.storage.records import decode_state, encode_state, record_size_bound
from kvactors.storage.replica import OPEN_CONTEXT_ENTRIES, Replica, ReplicaLimits
from kvactors.storage.store_supervisor import PartitionDirectory
from kvactors.testing import FakeClock

NOW: Final = 1_700_000_000.0  # the replica's wall clock, in seconds
NOW_MS: Final = int(NOW * 1000)
SKEW: Final = 60.0
LIMIT_MS: Final = NOW_MS + int(SKEW * 1000)  # the latest stamp the replica accepts
CEILING: Final = counter_ceiling(LIMIT_MS)  # the highest counter it accepts
KEY: Final = b"k"
FUZZ: Final = settings(max_examples=2000, deadline=None)


def replica(
    table: MemoryTable | None = None,
    *,
    node: str = "a",
    clock: FakeClock | None = None,
    **limits: Any,
) -> Replica:
    return Replica(
        MemoryTable() if table is None else table,
        node=node,
        wall_clock=FakeClock(NOW) if clock is None else clock,
        limits=ReplicaLimits(**{"max_clock_skew": SKEW, **limits}),
    )


def one(on: Replica, op: StoreOp) -> Any:
    """The result of `op` applied alone."""
    return on.apply([op])[0][0]


def read(on: Replica, key: bytes = KEY) -> KeyState:
    state = one(on, ReadKey(key))
    assert isinstance(state, KeyState)
    return state


def written(on: Replica, value: bytes | None, context: VectorClock | None) -> KeyState:
    """The state a write leaves; it must not be refused."""
    result = one(on, WriteKey(KEY, value, context))
    assert isinstance(result, Written), result
    return result.state


def refused(result: object, *words: str) -> BadRequestError:
    assert isinstance(result, BadRequestError), result
    for word in words:
        assert word in str(result)
    return result


def version(
    node: str = "peer",
    counter: int = 1,
    wall_ms: int = NOW_MS,
    *,
    logical: int = 0,
    past: VectorClock = EMPTY_STATE.context,
    value: bytes | None = b"\x01",
) -> Version:
    return Version(value, Dot(node, counter), past, HlcStamp(wall_ms, logical, node))


def state_of(*versions: Version, obsolete: VectorClock = EMPTY_STATE.obsolete) -> KeyState:
    return KeyState.from_versions(versions, obsolete)


def stays_writable(on: Replica, clock: FakeClock | None = None, key: bytes = KEY) -> None:
    """A write with the key's own context, and one more after it, both go through, and
    leave one version, stamped no later than a merge would take. (With `clock`, a
    millisecond later: a key whose counter is at the ceiling waits for it to rise.)"""
    if clock is not None:
        clock.advance(0.001)
    for value in (b"\x02", b"\x03"):
        result = one(on, WriteKey(key, value, read(on, key).context))
        assert isinstance(result, Written), result
        assert result.state.live_values() == [value]
        assert result.state.versions[0].stamp.wall_ms <= LIMIT_MS + 1


def invented(count: int, length: int = 8) -> VectorClock:
    """A context naming `count` nodes that never wrote anything, `length` bytes each."""
    return VectorClock.from_dict({f"{index:0{length}d}": 1 for index in range(count)})


# --------------------------------------------------------------------- the clock's bounds


def test_a_dot_floor_is_the_clock_in_milliseconds_times_1024_plus_its_logical_part() -> None:
    assert dot_floor(HlcStamp(5, 3, "a")) == 5 * 1024 + 3
    assert dot_floor(HlcStamp(5, 5000, "a")) == 5 * 1024 + 1023  # ten bits at most


@given(st.integers(0, 2**45), st.integers(0, 2**20), st.integers(0, 2**20))
def test_no_dot_a_clock_makes_up_to_a_time_is_above_that_times_ceiling(
    wall_ms: int, logical: int, later_ms: int
) -> None:
    made = dot_floor(HlcStamp(wall_ms, logical, "a"))
    assert made <= counter_ceiling(wall_ms) <= counter_ceiling(wall_ms + later_ms)
    assert counter_ceiling(wall_ms) - made >= COUNTER_MARGIN


def test_the_ceiling_of_a_clock_far_ahead_still_leaves_room_for_2_to_the_63_writes() -> None:
    year_3000_ms = 32_503_680_000_000
    assert counter_ceiling(year_3000_ms) < MAX_COUNTER - 2**63
    assert counter_ceiling(year_3000_ms) < MAX_CLIENT_COUNTER


# ------------------------------------------------------------ a client's context (attack 7)


@pytest.mark.parametrize("counter", [MAX_CLIENT_COUNTER - 1, MAX_CLIENT_COUNTER])
def test_a_context_counter_up_to_2_to_the_62_is_read(counter: int) -> None:
    sent = encode_context(VectorClock((("a", counter),)))
    assert client_context(sent) == (VectorClock((("a", counter),)), sent)


@pytest.mark.parametrize("counter", [MAX_CLIENT_COUNTER + 1, MAX_COUNTER - 1, MAX_COUNTER])
def test_a_context_counter_from_2_to_the_62_on_is_refused_at_decode(counter: int) -> None:
    sent = encode_context(VectorClock((("a", 1), ("b", counter))))
    assert decode_context(sent).counter("b") == counter  # a context can spell it ...
    with pytest.raises(BadRequestError, match="use the context a get returned"):
        client_context(sent)  # ... but no node made it


@pytest.mark.parametrize("entries", [MAX_CONTEXT_ENTRIES - 1, MAX_CONTEXT_ENTRIES])
def test_a_context_of_up_to_256_entries_is_read(entries: int) -> None:
    decoded = client_context(encode_context(invented(entries)))
    assert decoded is not None and len(decoded[0].entries) == entries


def test_a_context_of_257_entries_is_refused_at_decode() -> None:
    at_limit = encode_context(invented(MAX_CONTEXT_ENTRIES))
    # The same layout with one entry more: the count says 257, a 257th entry follows.
    over = bytes((1,)) + bytes((0x81, 0x02)) + at_limit[3:] + bytes((1,)) + b"~" + bytes((1,))
    with pytest.raises(BadRequestError, match="too many entries"):
        client_context(over)


# ------------------------------------------------------------ a peer's state (attack 6)


@pytest.mark.parametrize("wall_ms", [0, NOW_MS, LIMIT_MS - 1, LIMIT_MS])
def test_a_state_stamped_up_to_the_clock_plus_its_skew_is_within_bounds(wall_ms: int) -> None:
    check_state_bounds(state_of(version(wall_ms=wall_ms)), LIMIT_MS)


@pytest.mark.parametrize("wall_ms", [LIMIT_MS + 1, LIMIT_MS + 3_600_000, MAX_COUNTER])
def test_a_state_stamped_further_ahead_is_out_of_bounds(wall_ms: int) -> None:
    older = version("other", wall_ms=NOW_MS)
    with pytest.raises(ValueError, match="ms further ahead"):
        check_state_bounds(state_of(older, version(wall_ms=wall_ms)), LIMIT_MS)


def test_a_stamp_counts_at_most_2_to_the_48_within_a_millisecond() -> None:
    check_state_bounds(state_of(version(logical=MAX_STAMP_LOGICAL)), LIMIT_MS)
    for logical in (MAX_STAMP_LOGICAL + 1, MAX_COUNTER):
        with pytest.raises(ValueError, match="logical part"):
            check_state_bounds(state_of(version(logical=logical)), LIMIT_MS)


@pytest.mark.parametrize("where", ["dot", "past", "obsolete"])
def test_a_counter_up_to_the_ceiling_is_within_bounds_one_more_is_not(where: str) -> None:
    def with_counter(counter: int) -> KeyState:
        clock = VectorClock((("c", counter),))
        if where == "dot":
            return state_of(version(counter=counter))
        if where == "past":
            return state_of(version(past=clock))
        return state_of(version(), obsolete=clock)

    check_state_bounds(with_counter(CEILING - 1), LIMIT_MS)
    check_state_bounds(with_counter(CEILING), LIMIT_MS)
    for counter in (CEILING + 1, MAX_COUNTER - 1):
        with pytest.raises(ValueError, match=f"counter is {counter}"):
            check_state_bounds(with_counter(counter), LIMIT_MS)


def store_call(*ops: list[Any]) -> Call:
    return Call(1, "store", 2.0, {"ops": list(ops)})


def decode_store(call: Call) -> list[Any]:
    return store_ops(call, 1024, 1 << 20, max_clock_skew=SKEW, wall_clock=lambda: NOW)


def test_a_store_calls_merge_is_held_to_the_clock_at_decode() -> None:
    for wall_ms in (LIMIT_MS - 1, LIMIT_MS):
        state = state_of(version(wall_ms=wall_ms))
        (op,) = decode_store(store_call(["merge", KEY, state_to_wire(state)]))
        assert op == MergeKey(KEY, state)
    for wall_ms in (LIMIT_MS + 1, MAX_COUNTER):
        wire = state_to_wire(state_of(version(wall_ms=wall_ms)))
        call = store_call(["read", KEY], ["merge", KEY, wire])
        with pytest.raises(BadRequestError, match=r"store op 1 is a merge .* further ahead"):
            decode_store(call)
    wire = state_to_wire(state_of(version(counter=MAX_COUNTER - 1)))
    with pytest.raises(BadRequestError, match="counter"):
        decode_store(store_call(["merge", KEY, wire]))


def test_the_skew_a_store_call_allows_is_the_nodes_setting() -> None:
    wire = state_to_wire(state_of(version(wall_ms=NOW_MS + 30_000)))
    store_ops(store_call(["merge", KEY, wire]), 1024, 1 << 20, wall_clock=lambda: NOW)
    with pytest.raises(BadRequestError):
        store_ops(
            store_call(["merge", KEY, wire]),
            1024,
            1 << 20,
            max_clock_skew=10.0,
            wall_clock=lambda: NOW,
        )


# ----------------------------------------------------------- attack 6, against a replica


def test_a_merge_stamped_at_the_end_of_time_is_refused_and_the_key_stays_writable() -> None:
    on = replica()
    before = written(on, b"\x01", None)
    result = one(on, MergeKey(KEY, state_of(version(wall_ms=MAX_COUNTER))))
    refused(result, "merge refused", "further ahead")
    assert read(on) == before  # never stored
    stays_writable(on)


@pytest.mark.parametrize(("ahead_ms", "taken"), [(0, True), (-1, True), (1, False)])
def test_a_replica_takes_a_merge_stamped_up_to_its_skew_ahead(ahead_ms: int, taken: bool) -> None:
    on = replica()
    state = state_of(version(wall_ms=LIMIT_MS + ahead_ms))
    result = one(on, MergeKey(KEY, state))
    assert (result is None) is taken
    assert read(on) == (state if taken else EMPTY_STATE)
    stays_writable(on)


def test_a_stored_stamp_from_far_ahead_does_not_carry_the_replicas_clock_there() -> None:
    table = MemoryTable()
    # A record stored before such stamps were refused: stamped at the end of time.
    poisoned = state_of(version(wall_ms=MAX_COUNTER))
    table.apply([(KEY, encode_state(poisoned))])
    on = replica(table)
    stays_writable(on)
    # The replica's clock stayed here: a fresh key's write is stamped now.
    assert written(on, b"\x04", None) == read(on)
    other = one(on, WriteKey(b"other", b"\x05", None))
    assert other.state.versions[0].stamp.wall_ms == NOW_MS


def test_a_key_whose_own_counter_is_exhausted_is_refused_not_a_crash() -> None:
    table = MemoryTable()
    exhausted = state_of(version("a", MAX_COUNTER))  # stored before counters were bounded
    table.apply([(KEY, encode_state(exhausted))])
    on = replica(table)
    refused(one(on, WriteKey(KEY, b"\x02", None)), "no further write")
    refused(one(on, WriteKey(KEY, b"\x02", exhausted.context)), "not one a node made")
    assert read(on) == exhausted
    assert isinstance(one(on, WriteKey(b"other", b"\x02", None)), Written)


# ----------------------------------------------------------- attack 7, against a replica


@pytest.mark.parametrize("counter", [CEILING - 1, CEILING])
def test_a_context_counting_up_to_the_ceiling_is_taken(counter: int) -> None:
    on = replica()
    state = written(on, b"\x01", VectorClock((("b", counter),)))
    assert state.obsolete.counter("b") == counter
    stays_writable(on)


def test_no_write_here_makes_a_dot_past_the_ceiling_a_millisecond_later_it_may() -> None:
    clock = FakeClock(NOW)
    on = replica(clock=clock)
    state = written(on, b"\x01", VectorClock((("a", CEILING - 1),)))
    assert state.versions[0].dot == Dot("a", CEILING)  # the highest a merge takes
    check_state_bounds(state, LIMIT_MS)
    for context in (state.context, None):
        refused(one(on, WriteKey(KEY, b"\x02", context)), "try again in a moment")
    refused(one(on, WriteKey(b"other", b"\x02", VectorClock((("a", CEILING),)))), "moment")
    assert read(on) == state
    stays_writable(on, clock)


@pytest.mark.parametrize("counter", [CEILING + 1, MAX_CLIENT_COUNTER, MAX_COUNTER - 1])
def test_a_context_counting_past_the_ceiling_is_refused_and_the_key_stays_writable(
    counter: int,
) -> None:
    on = replica()
    before = written(on, b"\x01", None)
    for node in ("a", "b"):  # this replica's own counter, or another's
        context = before.context.merge(VectorClock(((node, counter),)))
        refused(one(on, WriteKey(KEY, b"\x09", context)), "max_clock_skew", "context a get")
        refused(one(on, WriteKey(KEY, None, context)), "max_clock_skew")
    assert read(on) == before
    stays_writable(on)


def test_a_context_of_256_invented_nodes_is_refused_and_the_key_stays_writable() -> None:
    on = replica()
    before = written(on, b"\x01", None)
    context = invented(MAX_CONTEXT_ENTRIES, length=255)
    decoded = client_context(encode_context(context))  # the format allows it
    assert decoded is not None
    refused(one(on, WriteKey(KEY, b"\x02", decoded[0])), "257 nodes", "at most 256")
    refused(one(on, WriteKey(b"fresh", b"\x02", decoded[0])), "257 nodes")
    assert read(on) == before
    stays_writable(on)


@pytest.mark.parametrize(
    ("names", "taken"),
    [
        (OPEN_CONTEXT_ENTRIES - 2, True),
        (OPEN_CONTEXT_ENTRIES - 1, True),
        (OPEN_CONTEXT_ENTRIES, False),
    ],
)
def test_invented_names_may_take_a_keys_history_to_32_nodes(names: int, taken: bool) -> None:
    on = replica()
    result = one(on, WriteKey(KEY, b"\x01", invented(names)))
    if taken:  # the names and this replica's own
        assert isinstance(result, Written)
        assert len(result.state.context.entries) == names + 1
    else:
        refused(result, f"names {names} nodes the key has not seen", "33 nodes")
        assert read(on) == EMPTY_STATE


def test_past_32_nodes_the_replicas_that_write_a_key_still_add_their_names() -> None:
    table = MemoryTable()
    first = replica(table, node="a")
    written(first, b"\x01", invented(OPEN_CONTEXT_ENTRIES - 1))
    # Other replicas coordinate the key in turn, with the context of a read.
    for node in ("b", "c", "d"):
        on = replica(table, node=node)
        state = written(on, node.encode(), read(on).context)
        assert state.context.counter(node) > 0
    assert len(read(first).context.entries) == OPEN_CONTEXT_ENTRIES + 3
    # A name the key has not seen is refused now, even one at a time ...
    context = read(first).context.merge(VectorClock((("new", 1),)))
    refused(one(first, WriteKey(KEY, b"\x02", context)), "names 1 nodes the key has not seen")
    # ... and a write without a context, or with the context read, goes on.
    written(first, b"\x03", None)
    stays_writable(first)


def test_a_history_of_256_nodes_takes_no_new_writer_and_no_merge_past_it() -> None:
    table = MemoryTable()
    names = invented(MAX_CONTEXT_ENTRIES - 1)
    one(replica(table), MergeKey(KEY, state_of(version("peer", 1), obsolete=names)))
    assert len(read(replica(table)).context.entries) == MAX_CONTEXT_ENTRIES
    newcomer = replica(table, node="zz")
    refused(one(newcomer, WriteKey(KEY, b"\x02", None)), "257 nodes")
    refused(one(newcomer, WriteKey(KEY, b"\x02", read(newcomer).context)), "257 nodes")
    assert isinstance(one(replica(table, node="peer"), WriteKey(KEY, b"\x03", None)), Written)
    # A merge that would take it past 256 is refused too: no record could hold it.
    before = read(newcomer)
    wider = state_of(version("other", 1), obsolete=invented(1, length=3))
    refused(one(newcomer, MergeKey(KEY, wider)), "merge refused", "258 nodes")
    assert read(newcomer) == before


# ------------------------------------------------------------- attack 8: siblings


def stale_writes(on: Replica, count: int) -> list[Any]:
    """`count` writes with the context of one old read: each adds a sibling."""
    results = []
    for index in range(count):
        results.append(one(on, WriteKey(KEY, bytes((index,)), VectorClock())))
    return results


@pytest.mark.parametrize("siblings", [2, 3])
def test_writes_may_leave_up_to_max_siblings(siblings: int) -> None:
    on = replica(max_siblings=3)
    results = stale_writes(on, siblings)
    assert all(isinstance(result, Written) for result in results)
    assert len(read(on).versions) == siblings


def test_a_write_past_max_siblings_is_refused_and_a_read_context_resolves_them() -> None:
    on = replica(max_siblings=3)
    stale_writes(on, 3)
    before = read(on)
    for value in (b"\x09", None):  # a put or a delete
        result = one(on, WriteKey(KEY, value, VectorClock()))
        refused(result, "3 siblings", "max_siblings (3)", "write with the context it returns")
    assert read(on) == before  # readable, unchanged
    assert len(written(on, b"\x0a", before.context).versions) == 1


def test_merges_are_never_refused_for_siblings_and_a_write_that_adds_none_goes_on() -> None:
    on = replica(max_siblings=3)
    stale_writes(on, 3)
    elsewhere = state_of(*(version("peer", counter) for counter in range(1, 6)))
    assert one(on, MergeKey(KEY, elsewhere)) is None
    state = read(on)
    assert len(state.versions) == 8
    refused(one(on, WriteKey(KEY, b"\x09", VectorClock())), "8 siblings")
    # Superseding one sibling and adding one leaves 8: not more than before.
    covering_one = VectorClock((("peer", 1),))
    assert len(written(on, b"\x0a", covering_one).versions) == 8
    assert len(written(on, b"\x0b", None).versions) == 1  # a write without context resolves


# ---------------------------------------------------------- attack 8: the state's size


def record_size(on: Replica) -> int:
    record = on._table.get(KEY)  # the size of what is stored
    return 0 if record is None else len(record)


def sized_history(on: Replica) -> Any:
    """One value, then a sibling of a bigger one: returns the second write's result."""
    written(on, b"\xc4\x80" + bytes(128), None)
    return one(on, WriteKey(KEY, b"\xc5\x03\x00" + bytes(768), VectorClock()))


@pytest.mark.parametrize(("margin", "taken"), [(1, True), (0, True), (-1, False)])
def test_a_write_may_leave_a_state_of_up_to_max_state_bytes(margin: int, taken: bool) -> None:
    measure = replica()
    sized_history(measure)
    size = record_size(measure)
    on = replica(max_state_bytes=size + margin)
    result = sized_history(on)
    if taken:
        assert isinstance(result, Written)
        assert record_size(on) == size
    else:
        refused(result, f"at {size} bytes", f"max_state_bytes ({size - 1})", "context")
        assert len(read(on).versions) == 1


def test_a_blind_write_is_held_to_max_state_bytes_too() -> None:
    measure = replica()
    written(measure, bytes(300), None)
    size = record_size(measure)
    for limit, taken in ((size + 1, True), (size, True), (size - 1, False)):
        put, write = replica(max_state_bytes=limit), replica(max_state_bytes=limit)
        assert isinstance(one(put, Put(KEY, bytes(300))), BadRequestError) is not taken
        assert isinstance(one(write, WriteKey(KEY, bytes(300), None)), Written) is taken
        assert record_size(put) == record_size(write) == (size if taken else 0)


def test_the_state_size_counts_its_clocks_not_only_its_values() -> None:
    on = replica(max_state_bytes=40_000)
    long_names = invented(OPEN_CONTEXT_ENTRIES - 1, length=255)  # ~8 kB a clock
    results = [one(on, WriteKey(KEY, bytes((index,)), long_names)) for index in range(8)]
    taken = [result for result in results if isinstance(result, Written)]
    assert 1 <= len(taken) < 8  # values of one byte each: the clocks filled it
    refused(results[-1], "max_state_bytes (40000)")
    assert record_size(on) <= 40_000
    stays_writable(on)


def test_merges_are_never_refused_for_size() -> None:
    on = replica(max_state_bytes=1_000)
    big = state_of(*(version("peer", counter, value=bytes(500)) for counter in range(1, 5)))
    assert one(on, MergeKey(KEY, big)) is None
    assert record_size(on) > 1_000
    assert len(written(on, b"\x01", read(on).context).versions) == 1


# -------------------------------------------------- a refusal fails its op, nothing else


def test_a_refused_op_fails_alone_in_its_batch() -> None:
    on = replica(max_siblings=1)
    written(on, b"\x01", None)
    results, writes = on.apply(
        [
            WriteKey(b"x", b"\x02", None),
            WriteKey(KEY, b"\x03", VectorClock()),  # a second sibling: refused
            MergeKey(b"y", state_of(version(wall_ms=MAX_COUNTER))),  # from the future
            WriteKey(b"z", b"\x04", None),
        ]
    )
    assert isinstance(results[0], Written) and isinstance(results[3], Written)
    refused(results[1], "max_siblings")
    refused(results[2], "merge refused")
    assert sorted(key for key, _ in writes) == [b"x", b"z"]
    assert read(on).live_values() == [b"\x01"]


def test_a_bulk_merge_skips_a_refused_state_and_takes_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    on = replica()
    good = state_of(version())
    items = [(b"a", good), (b"b", state_of(version(wall_ms=MAX_COUNTER))), (b"c", good)]
    with caplog.at_level(logging.WARNING, logger="kvactors.storage.replica"):
        assert one(on, MergeMany(items)) is None
    assert read(on, b"a") == good and read(on, b"c") == good
    assert read(on, b"b") == EMPTY_STATE
    assert any("merge of key b'b' refused" in record.getMessage() for record in caplog.records)


def test_local_batches_hand_a_refused_op_to_its_target_as_a_failure() -> None:
    class Target:
        def __init__(self) -> None:
            self.done: list[Any] = []
            self.failed: list[Any] = []

        def replica_done(self, tag: Any, result: Any) -> None:
            self.done.append((tag, result))

        def replica_failed(self, tag: Any, error: KVActorsError) -> None:
            self.failed.append((tag, error))

    target = Target()
    batches = LocalBatches(PartitionDirectory(1), lambda call: call(), lambda: True)
    refusal = BadRequestError("too many siblings")
    entries: Any = [(target, 1, ReadKey(KEY)), (target, 2, ReadKey(KEY))]
    batches.done(entries, [EMPTY_STATE, refusal])
    assert target.done == [(1, EMPTY_STATE)]
    assert target.failed == [(2, refusal)]


def test_the_limits_a_node_gives_its_replicas_are_its_settings() -> None:
    assert ReplicaLimits.from_config(NodeConfig()) == ReplicaLimits()
    config = NodeConfig(max_siblings=7, max_state_bytes=12_345, max_clock_skew=2.5)
    assert ReplicaLimits.from_config(config) == ReplicaLimits(7, 12_345, 2.5)


# ------------------------------------------------------------------------------ fuzzing

NAMES: Final = ("a", "b", "peer", "n" * 255, "é")
# Counters and times at every edge a bound has, and far past them.
EDGE_COUNTERS: Final = (1, 2, CEILING - 1, CEILING, CEILING + 1, MAX_CLIENT_COUNTER)
counters = st.sampled_from(
    (*EDGE_COUNTERS, MAX_CLIENT_COUNTER + 1, MAX_COUNTER - 1, MAX_COUNTER)
) | st.integers(1, MAX_COUNTER)
wall_times = st.sampled_from(
    [0, NOW_MS, LIMIT_MS - 1, LIMIT_MS, LIMIT_MS + 1, MAX_COUNTER]
) | st.integers(0, MAX_COUNTER)
logicals = st.sampled_from([0, 1, MAX_STAMP_LOGICAL, MAX_STAMP_LOGICAL + 1, MAX_COUNTER])
names = st.sampled_from(NAMES)
small_clocks = st.dictionaries(names, counters, max_size=3).map(VectorClock.from_dict)
many_names = st.integers(0, MAX_CONTEXT_ENTRIES).map(invented)
client_clocks = (
    small_clocks
    | many_names
    | st.builds(VectorClock.merge, small_clocks, many_names).filter(
        lambda clock: len(clock.entries) <= MAX_CONTEXT_ENTRIES
    )
)


def contexts_sent() -> st.SearchStrategy[bytes]:
    """What a client may send as a context: one a node could spell, or any bytes."""
    spelled = client_clocks.map(encode_context)
    return spelled | st.binary(max_size=80) | spelled.map(lambda sent: sent[:-1] + b"\xff")


def _siblings_record() -> bytes:
    on = replica()
    written(on, b"\x01", None)
    stale_writes(on, 2)
    one(on, MergeKey(KEY, state_of(version("peer", 3, NOW_MS - 5))))
    record = on._table.get(KEY)
    assert record is not None
    return record


SIBLINGS: Final = _siblings_record()
"""A key of four siblings, three written here and one through a peer."""


def replica_with_siblings(clock: FakeClock) -> Replica:
    table = MemoryTable()
    table.apply([(KEY, SIBLINGS)])
    return replica(table, clock=clock, max_siblings=5, max_state_bytes=200_000)


def assert_sound(on: Replica, clock: FakeClock) -> None:
    """The key's record decodes with every check, within its size bound and the clock's
    (every other replica would take it), and the key takes writes with its context."""
    record = on._table.get(KEY)
    assert record is not None
    state = decode_state(record)
    assert record_size_bound(state) >= len(record)
    check_state_bounds(state, LIMIT_MS)
    stays_writable(on, clock)


@FUZZ
@given(contexts_sent(), st.sampled_from([b"\x07", None]))
def test_fuzz_client_contexts_are_refused_or_written_never_a_crash(
    sent: bytes, value: bytes | None
) -> None:
    clock = FakeClock(NOW)
    on = replica_with_siblings(clock)
    try:
        decoded = client_context(sent)
    except BadRequestError:
        contexts = []
    else:
        assert decoded is not None
        contexts = [decoded[0]]
    with contextlib.suppress(ValueError):  # past the decode: the replica's own checks
        contexts.append(decode_context(sent))
    for context in contexts:
        result = one(on, WriteKey(KEY, value, context))
        assert isinstance(result, Written | BadRequestError), result
    assert_sound(on, clock)


def wire_versions() -> st.SearchStrategy[list[Any]]:
    return st.lists(
        st.tuples(
            st.none() | st.just(b"\x01"),
            names,
            counters,
            small_clocks.map(lambda clock: state_to_wire(KeyState(clock))[0]),
            wall_times,
            logicals,
            st.none() | names,
        ).map(list),
        max_size=3,
    )


garbage = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), MAX_COUNTER)
    | st.binary(max_size=8)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4),
    max_leaves=12,
)
wire_states = (
    st.tuples(
        small_clocks.map(lambda clock: state_to_wire(KeyState(clock))[0]), wire_versions()
    ).map(list)
    | garbage
)


@FUZZ
@given(wire_states)
def test_fuzz_peer_states_are_refused_or_merged_never_a_crash(wire: Any) -> None:
    clock = FakeClock(NOW)
    on = replica_with_siblings(clock)
    try:
        ops = decode_store(store_call(["merge", KEY, wire]))
    except BadRequestError:
        # Refused at decode. A state that reaches the replica another way (a read's
        # answer, a join's pull) is held to the same bounds there.
        try:
            state = state_from_wire(wire)
        except ValueError:
            state = None
        if state is not None:
            assert isinstance(one(on, MergeKey(KEY, state)), NoneType | BadRequestError)
    else:
        assert one(on, ops[0]) is None  # taken at decode: the replica agrees
    assert_sound(on, clock)
