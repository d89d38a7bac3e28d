"""Tests for kvactors.core.clocks: vector clocks, hybrid logical clocks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvactors.core.clocks import MAX_COUNTER, Hlc, HlcStamp, VectorClock

NODES = ("a", "b", "c", "d")

counter_maps = st.dictionaries(st.sampled_from(NODES), st.integers(0, 4))
clocks = counter_maps.map(VectorClock.from_dict)


def reference_leq(low: VectorClock, high: VectorClock) -> bool:
    """low <= high entry-wise, computed over the union of nodes from the raw pairs."""
    low_map, high_map = dict(low.entries), dict(high.entries)
    return all(low_map.get(node, 0) <= high_map.get(node, 0) for node in {*low_map, *high_map})


# --------------------------------------------------------------------------- vector clocks


def test_vector_clock_is_canonical() -> None:
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
def test_vector_clock_rejects_non_canonical_entries(entries: tuple[tuple[str, int], ...]) -> None:
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
def test_vector_clock_wire_roundtrip(clock: VectorClock) -> None:
    wire = clock.to_wire()
    assert isinstance(wire, dict)
    assert VectorClock.from_wire(wire) == clock


@pytest.mark.parametrize(
    "wire",
    [[("a", 1)], {"a": 0}, {"a": -3}, {"a": True}, {"a": 1.0}, {1: 1}, {"": 1}, None, "a"],
)
def test_vector_clock_from_wire_rejects_malformed(wire: object) -> None:
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


@given(clocks, clocks)
def test_exactly_one_relation_holds_between_two_clocks(a: VectorClock, b: VectorClock) -> None:
    relations = [a == b, a.dominates(b), b.dominates(a), a.concurrent(b)]
    assert relations.count(True) == 1
    assert a.descends(b) == (a == b or a.dominates(b))
