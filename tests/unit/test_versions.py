"""Tests for kvactors.distribution.versions: clocks, HLC, siblings, tombstones, encodings."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvactors.distribution.versions import (
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_ENTRIES,
    MAX_COUNTER,
    MAX_NODE_NAME_BYTES,
    Hlc,
    HlcStamp,
    Siblings,
    VectorClock,
    Version,
    apply_write,
    causal_context,
    decode_context,
    encode_context,
    new_delete,
    new_write,
    purge_tombstones,
    reconcile,
    siblings_from_wire,
    siblings_to_wire,
    supersedes,
    winner,
)

NODES = ("a", "b", "c", "d")

counter_maps = st.dictionaries(st.sampled_from(NODES), st.integers(0, 4))
clocks = counter_maps.map(VectorClock.from_dict)


def reference_leq(low: VectorClock, high: VectorClock) -> bool:
    """low <= high entry-wise, computed over the union of nodes from the raw pairs."""
    low_map, high_map = dict(low.entries), dict(high.entries)
    return all(low_map.get(node, 0) <= high_map.get(node, 0) for node in {*low_map, *high_map})


@st.composite
def histories(draw: st.DrawFn, max_writes: int = 8) -> list[Version]:
    """A causal history: each write saw a random subset of the earlier ones.

    Each node numbers its own writes, as a coordinator with durable counters does, so every
    write has a distinct clock and domination is exactly strict clock descent.
    """
    written: list[Version] = []
    own_counters = dict.fromkeys(NODES, 0)
    for index in range(draw(st.integers(1, max_writes))):
        node = draw(st.sampled_from(NODES))
        seen = draw(st.lists(st.sampled_from(written), unique_by=id)) if written else []
        own_counters[node] += 1
        counters = causal_context(seen).as_dict()
        counters[node] = own_counters[node]
        stamp = HlcStamp(draw(st.integers(0, 20)), index, node)
        if draw(st.booleans()):
            version = Version(f"v{index}".encode(), VectorClock.from_dict(counters), stamp)
        else:
            clock = VectorClock.from_dict(counters)
            version = Version(None, clock, stamp, tombstone=True)
        written.append(version)
    return written


@st.composite
def history_and_subsets(draw: st.DrawFn) -> tuple[list[Version], list[Version], list[Version]]:
    history = draw(histories())
    first = draw(st.lists(st.sampled_from(history), unique_by=id))
    second = draw(st.lists(st.sampled_from(history), unique_by=id))
    return history, first, second


def reference_maximal(pool: Iterable[Version]) -> set[Version]:
    """Versions whose clock no other version's clock strictly exceeds (distinct clocks)."""
    unique = set(pool)
    return {
        candidate
        for candidate in unique
        if not any(
            other.clock != candidate.clock and reference_leq(candidate.clock, other.clock)
            for other in unique
        )
    }


# ------------------------------------------------------------------------------ the module


# --------------------------------------------------------------------------- vector clocks


def test_context_clockis_canonical() -> None:
    clock = VectorClock.from_dict({"b": 2, "a": 1, "c": 0})
    assert clock.entries == (("a", 1), ("b", 2))
    assert clock == VectorClock.from_dict({"a": 1, "b": 2})
    assert clock.counter("b") == 2
    assert clock.counter("c") == 0


@pytest.mark.parametrize(
    "entries",
    [
        (("b", 1), ("a", 1)),
        (("a", 1), ("a", 2)),
        (("a", 0),),
        (("a", -1),),
        (("", 1),),
        (("a", MAX_COUNTER + 1),),
    ],
)
def test_context_clockrejects_non_canonical_entries(entries: tuple[tuple[str, int], ...]) -> None:
    with pytest.raises(ValueError):
        VectorClock(entries)


@given(counter_maps, st.sampled_from(NODES))
def test_increment_raises_only_that_entry(counters: dict[str, int], node: str) -> None:
    clock = VectorClock.from_dict(counters)
    bumped = clock.increment(node)
    for other in NODES:
        expected = counters.get(other, 0) + (1 if other == node else 0)
        assert bumped.counter(other) == expected
    assert bumped.dominates(clock)


@given(clocks, clocks)
def test_merge_is_commutative(a: VectorClock, b: VectorClock) -> None:
    assert a.merge(b) == b.merge(a)


@given(clocks, clocks, clocks)
def test_merge_is_associative(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(clocks)
def test_merge_is_idempotent(a: VectorClock) -> None:
    assert a.merge(a) == a


@given(clocks, clocks, clocks)
def test_merge_is_the_least_upper_bound(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    merged = a.merge(b)
    assert merged.descends(a)
    assert merged.descends(b)
    upper = c.merge(a).merge(b)
    assert upper.descends(merged)
    for node in NODES:
        assert merged.counter(node) == max(a.counter(node), b.counter(node))


@given(clocks, clocks)
def test_descends_matches_entrywise_comparison(a: VectorClock, b: VectorClock) -> None:
    assert a.descends(b) == reference_leq(b, a)
    assert a.dominates(b) == (reference_leq(b, a) and a != b)


@given(clocks)
def test_descends_is_reflexive(a: VectorClock) -> None:
    assert a.descends(a)
    assert not a.dominates(a)
    assert not a.concurrent(a)


@given(clocks, clocks)
def test_descends_is_antisymmetric(a: VectorClock, b: VectorClock) -> None:
    if a.descends(b) and b.descends(a):
        assert a == b
    if a != b:
        assert not (a.descends(b) and b.descends(a))


@given(clocks, clocks, clocks)
def test_descends_is_transitive(low: VectorClock, x: VectorClock, y: VectorClock) -> None:
    # Build a chain low <= middle <= high so the premise always holds.
    middle = low.merge(x)
    high = middle.merge(y)
    assert middle.descends(low)
    assert high.descends(middle)
    assert high.descends(low)
    # And the implication on arbitrary triples.
    if x.descends(y) and y.descends(low):
        assert x.descends(low)


@given(clocks, clocks)
def test_concurrent_iff_neither_descends(a: VectorClock, b: VectorClock) -> None:
    assert a.concurrent(b) == (not reference_leq(a, b) and not reference_leq(b, a))
    assert a.concurrent(b) == b.concurrent(a)


def test_concurrent_example() -> None:
    base = VectorClock().increment("a")
    left = base.increment("b")
    right = base.increment("c")
    assert left.concurrent(right)
    assert not left.concurrent(base)
    assert left.merge(right).dominates(left)


@given(clocks)
def test_context_clockwire_roundtrip(clock: VectorClock) -> None:
    wire = clock.to_wire()
    assert isinstance(wire, dict)
    assert VectorClock.from_wire(wire) == clock


@pytest.mark.parametrize(
    "wire",
    [[("a", 1)], {"a": 0}, {"a": -3}, {"a": True}, {"a": 1.0}, {1: 1}, {"": 1}, None, "a"],
)
def test_context_clockfrom_wire_rejects_malformed(wire: object) -> None:
    with pytest.raises(ValueError):
        VectorClock.from_wire(wire)


# ------------------------------------------------------------------- hybrid logical clock


def test_stamps_order_by_wall_then_logical_then_node() -> None:
    assert HlcStamp(1, 9, "z") < HlcStamp(2, 0, "a")
    assert HlcStamp(2, 0, "z") < HlcStamp(2, 1, "a")
    assert HlcStamp(2, 1, "a") < HlcStamp(2, 1, "b")
    with pytest.raises(ValueError):
        HlcStamp(-1, 0, "a")


remote_stamps = st.builds(
    HlcStamp, st.integers(0, 50), st.integers(0, 5), st.sampled_from(("x", "y", "a"))
)
hlc_events = st.lists(
    st.tuples(st.integers(0, 50), st.none() | remote_stamps), min_size=1, max_size=30
)


@given(hlc_events)
def test_hlc_is_strictly_monotonic_and_never_behind(
    events: list[tuple[int, HlcStamp | None]],
) -> None:
    # Physical time jumps back and forth on purpose: a stepped clock must not break order.
    clock = Hlc("a")
    previous = clock.last
    for physical_ms, remote in events:
        stamp = clock.now(physical_ms) if remote is None else clock.observe(remote, physical_ms)
        assert stamp > previous
        assert stamp.node == "a"
        assert stamp.wall_ms >= physical_ms
        if remote is not None:
            assert (stamp.wall_ms, stamp.logical) > (remote.wall_ms, remote.logical)
        assert clock.last == stamp
        previous = stamp


def test_hlc_logical_resets_when_physical_time_advances() -> None:
    clock = Hlc("a")
    assert clock.now(10) == HlcStamp(10, 0, "a")
    assert clock.now(10) == HlcStamp(10, 1, "a")
    assert clock.now(5) == HlcStamp(10, 2, "a")
    assert clock.observe(HlcStamp(10, 7, "b"), 3) == HlcStamp(10, 8, "a")
    assert clock.observe(HlcStamp(30, 4, "b"), 20) == HlcStamp(30, 5, "a")
    assert clock.now(31) == HlcStamp(31, 0, "a")


def test_hlc_restores_from_a_stamp() -> None:
    clock = Hlc("a", HlcStamp(100, 3, "a"))
    assert clock.now(50) == HlcStamp(100, 4, "a")
    with pytest.raises(ValueError):
        Hlc("a", HlcStamp(100, 3, "b"))


@given(remote_stamps)
def test_stamp_wire_roundtrip(stamp: HlcStamp) -> None:
    assert HlcStamp.from_wire(stamp.to_wire()) == stamp


@pytest.mark.parametrize(
    "wire", [[1, 2], [1, 2, 3], ["1", 2, "a"], [True, 0, "a"], [-1, 0, "a"], {"w": 1}, None]
)
def test_stamp_from_wire_rejects_malformed(wire: object) -> None:
    with pytest.raises(ValueError):
        HlcStamp.from_wire(wire)


# ----------------------------------------------------------------------------- versions


def stamp(wall_ms: int, node: str = "a") -> HlcStamp:
    return HlcStamp(wall_ms, 0, node)


def clock(**counters: int) -> VectorClock:
    return VectorClock.from_dict(counters)


@pytest.mark.parametrize(
    "fields",
    [
        {"value": None, "tombstone": False},
        {"value": b"x", "tombstone": True},
        {"value": b"x", "tombstone": False, "deleted_at_ms": 5},
        {"value": None, "tombstone": True, "deleted_at_ms": -1},
    ],
)
def test_version_rejects_inconsistent_fields(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Version(clock=clock(a=1), stamp=stamp(1), **fields)  # type: ignore[arg-type]


@given(history_and_subsets())
def test_reconcile_keeps_exactly_the_undominated(
    case: tuple[list[Version], list[Version], list[Version]],
) -> None:
    _, first, second = case
    result = reconcile(first, second)
    assert set(result) == reference_maximal([*first, *second])
    assert len(result) == len(set(result))
    stamps = [version.stamp for version in result]
    assert stamps == sorted(stamps, reverse=True)


@given(history_and_subsets(), st.data())
def test_reconcile_is_commutative_associative_idempotent(
    case: tuple[list[Version], list[Version], list[Version]], data: st.DataObject
) -> None:
    history, first, second = case
    third = data.draw(st.lists(st.sampled_from(history), unique_by=id))
    a, b, c = reconcile(first), reconcile(second), reconcile(third)
    assert reconcile(a, b) == reconcile(b, a)
    assert reconcile(reconcile(a, b), c) == reconcile(a, reconcile(b, c))
    assert reconcile(a, a) == a
    assert reconcile(a) == a


@given(history_and_subsets())
def test_apply_write_is_reconcile_with_one_version(
    case: tuple[list[Version], list[Version], list[Version]],
) -> None:
    history, first, _ = case
    existing = reconcile(first)
    for version in history:
        after = apply_write(existing, version)
        assert set(after) == reference_maximal([*existing, version])
        # Writing the same version again is not a second sibling.
        assert apply_write(after, version) == after


@given(history_and_subsets(), st.sampled_from(NODES), st.booleans())
def test_write_with_full_context_supersedes_everything_read(
    case: tuple[list[Version], list[Version], list[Version]], node: str, pass_local: bool
) -> None:
    _, first, _ = case
    read = reconcile(first)
    local = read if pass_local else ()
    new = new_write(causal_context(read), node, stamp(99, node), b"new", local_siblings=local)
    assert apply_write(read, new) == (new,)
    tombstone = new_delete(causal_context(read), node, stamp(99, node), local_siblings=local)
    assert apply_write(read, tombstone) == (tombstone,)


@given(history_and_subsets(), st.data())
def test_write_with_partial_context_supersedes_exactly_what_was_read(
    case: tuple[list[Version], list[Version], list[Version]], data: st.DataObject
) -> None:
    _, first, _ = case
    stored = reconcile(first)
    read = data.draw(st.lists(st.sampled_from(stored), unique_by=id)) if stored else []
    context = causal_context(read)
    # A coordinator no earlier write names, so the new clock cannot collide with a stored one.
    new = new_write(context, "z", stamp(99, "z"), b"new")
    after = apply_write(stored, new)
    assert new in after
    assert not set(read) & set(after)
    untouched = {version for version in stored if not reference_leq(version.clock, context)}
    assert set(after) == untouched | {new}


def test_new_write_increments_the_coordinator_entry() -> None:
    context = clock(a=2, b=1)
    written = new_write(context, "b", stamp(5, "b"), b"v")
    assert written.clock == clock(a=2, b=2)
    assert not written.tombstone
    assert written.value == b"v"


def test_new_write_passes_the_coordinators_earlier_counters() -> None:
    # The client read {a:1}; meanwhile coordinator b made its fifth write of this key.
    local = (Version(b"old", clock(a=1, b=5), stamp(3, "b")),)
    written = new_write(clock(a=1), "b", stamp(5, "b"), b"v", local_siblings=local)
    assert written.clock == clock(a=1, b=6)
    assert all(written.clock != version.clock for version in local)


def test_new_delete_is_a_tombstone_stamped_now() -> None:
    deleted = new_delete(clock(a=1), "a", stamp(42))
    assert deleted.tombstone
    assert deleted.value is None
    assert deleted.clock == clock(a=2)
    assert deleted.deleted_at_ms == 42


def test_stale_write_changes_nothing() -> None:
    current = (Version(b"new", clock(a=2), stamp(5)),)
    assert apply_write(current, Version(b"old", clock(a=1), stamp(9))) == current


def test_concurrent_writes_become_siblings_newest_first() -> None:
    left = Version(b"left", clock(a=1, b=1), stamp(5, "b"))
    right = Version(b"right", clock(a=1, c=1), stamp(7, "c"))
    siblings = apply_write(apply_write((), left), right)
    assert siblings == (right, left)
    assert winner(siblings) == right


def test_equal_clocks_keep_the_higher_stamp_on_every_replica() -> None:
    first = Version(b"first", clock(a=1), stamp(5))
    second = Version(b"second", clock(a=1), stamp(6))
    assert reconcile((first,), (second,)) == (second,)
    assert reconcile((second,), (first,)) == (second,)
    assert supersedes(second, first)
    assert not supersedes(first, second)


def test_winner_is_the_highest_stamp_ties_broken_by_node() -> None:
    low = Version(b"low", clock(a=1), HlcStamp(5, 0, "a"))
    high = Version(None, clock(b=1), HlcStamp(5, 0, "b"), tombstone=True)
    assert winner((low, high)) == high
    assert winner((high, low)) == high
    assert winner(()) is None


# ---------------------------------------------------------------------------- tombstones


def tombstone(wall_ms: int, deleted_at_ms: int | None = None, node: str = "a") -> Version:
    return Version(
        None, clock(**{node: 1}), stamp(wall_ms, node), tombstone=True, deleted_at_ms=deleted_at_ms
    )


@pytest.mark.parametrize(
    ("siblings", "now_ms", "purged"),
    [
        ((tombstone(100),), 200, True),  # exactly the grace period old
        ((tombstone(100),), 199, False),  # still young
        ((tombstone(100, deleted_at_ms=150),), 200, False),  # deleted_at_ms overrides the stamp
        ((tombstone(100, deleted_at_ms=50),), 150, True),
        ((tombstone(0), tombstone(10, node="b")), 500, True),  # only old tombstones left
        ((tombstone(0), tombstone(450, node="b")), 500, False),  # one is still young
        ((tombstone(0), Version(b"v", clock(b=1), stamp(1, "b"))), 500, False),  # live sibling
        ((Version(b"v", clock(b=1), stamp(1, "b")),), 500, False),
        ((), 500, False),
    ],
)
def test_purge_tombstones(siblings: Siblings, now_ms: int, purged: bool) -> None:
    assert purge_tombstones(siblings, now_ms, grace_ms=100) == (() if purged else siblings)


# --------------------------------------------------------------------------- wire formats

BUILTIN_LEAVES = (str, int, bytes, bool, type(None))


def only_builtins(value: object) -> bool:
    if isinstance(value, list):
        return all(only_builtins(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and only_builtins(item) for key, item in value.items())
    return isinstance(value, BUILTIN_LEAVES)


@given(histories())
def test_version_wire_roundtrip(history: list[Version]) -> None:
    for version in history:
        wire = version.to_wire()
        assert only_builtins(wire)
        assert Version.from_wire(wire) == version
        assert Version.from_wire(tuple(wire)) == version
    siblings = reconcile(history)
    assert siblings_from_wire(siblings_to_wire(siblings)) == siblings


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [b"v", {"a": 1}, [1, 0, "a"], False],
        ["text", {"a": 1}, [1, 0, "a"], False, None],
        [b"v", {"a": 1}, [1, 0, "a"], 0, None],
        [b"v", {"a": 1}, [1, 0, "a"], True, None],
        [None, {"a": 1}, [1, 0, "a"], True, "5"],
        [b"v", {"a": 0}, [1, 0, "a"], False, None],
        [b"v", {"a": 1}, [1, 0], False, None],
    ],
)
def test_version_from_wire_rejects_malformed(wire: object) -> None:
    with pytest.raises(ValueError):
        Version.from_wire(wire)


def test_siblings_from_wire_rejects_non_lists() -> None:
    with pytest.raises(ValueError):
        siblings_from_wire({"a": 1})


# ------------------------------------------------------------------------- client context

node_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_NODE_NAME_BYTES).filter(
    lambda name: len(name.encode()) <= MAX_NODE_NAME_BYTES
)
context_clocks = st.dictionaries(node_names, st.integers(1, MAX_COUNTER), max_size=8).map(
    VectorClock.from_dict
)


@given(context_clocks)
def test_context_roundtrip(context_clock: VectorClock) -> None:
    encoded = encode_context(context_clock)
    assert isinstance(encoded, bytes)
    assert len(encoded) <= MAX_CONTEXT_BYTES
    assert decode_context(encoded) == context_clock


@given(st.binary(max_size=64))
def test_random_bytes_decode_canonically_or_raise(data: bytes) -> None:
    try:
        decoded = decode_context(data)
    except ValueError:
        return
    assert encode_context(decoded) == data


@given(context_clocks, st.data())
def test_mutated_contexts_decode_canonically_or_raise(
    context_clock: VectorClock, data: st.DataObject
) -> None:
    encoded = bytearray(encode_context(context_clock))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_context(bytes(encoded))
    except ValueError:
        return
    assert encode_context(decoded) == bytes(encoded)


@given(context_clocks)
def test_truncated_or_extended_contexts_raise(context_clock: VectorClock) -> None:
    encoded = encode_context(context_clock)
    for end in range(len(encoded)):
        with pytest.raises(ValueError):
            decode_context(encoded[:end])
    with pytest.raises(ValueError):
        decode_context(encoded + b"\x00")


def test_context_layout() -> None:
    assert encode_context(VectorClock()) == b"\x01\x00"
    assert encode_context(clock(a=1, b=300)) == b"\x01\x02\x01a\x01\x01b\xac\x02"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x00",  # unknown format
        b"\x01\x80\x00",  # count varint padded
        b"\x01\x01\x01a\x00",  # zero counter
        b"\x01\x01\x00\x01",  # empty name
        b"\x01\x01\x01a\x81\x00",  # counter varint padded
        b"\x01\x02\x01b\x01\x01a\x01",  # names not sorted
        b"\x01\x02\x01a\x01\x01a\x02",  # duplicate name
        b"\x01\x01\x01\xff\x01",  # name is not UTF-8
        b"\x01\x01\x01a" + b"\xff" * 10 + b"\x01",  # varint too long
        b"\x01\x01\x01a" + b"\xff" * 9 + b"\x02",  # counter above 2**64 - 1
        b"\x01\x01\x80\x02" + b"a" * 256 + b"\x01",  # name longer than 255 bytes
        b"\x01\x81\x02",  # 257 entries announced
        "text",
        None,
        12,
    ],
)
def test_malformed_contexts_raise(data: object) -> None:
    with pytest.raises(ValueError):
        decode_context(data)


def test_oversized_context_is_refused_before_parsing() -> None:
    with pytest.raises(ValueError, match="too large"):
        decode_context(b"\x01\x00" + b"\x00" * MAX_CONTEXT_BYTES)


def test_largest_context_fits_the_limit() -> None:
    longest = [
        f"{index:03d}".ljust(MAX_NODE_NAME_BYTES, "n") for index in range(MAX_CONTEXT_ENTRIES)
    ]
    biggest = VectorClock.from_dict(dict.fromkeys(longest, MAX_COUNTER))
    encoded = encode_context(biggest)
    assert len(encoded) <= MAX_CONTEXT_BYTES
    assert decode_context(encoded) == biggest


def test_encode_rejects_clocks_outside_the_limits() -> None:
    with pytest.raises(ValueError):
        encode_context(
            VectorClock.from_dict({f"n{i:04d}": 1 for i in range(MAX_CONTEXT_ENTRIES + 1)})
        )
    with pytest.raises(ValueError):
        encode_context(VectorClock.from_dict({"x" * (MAX_NODE_NAME_BYTES + 1): 1}))
