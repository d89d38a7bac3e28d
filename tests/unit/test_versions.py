"""Tests for kvactors.core.versions: dotted key states, how they merge, their wire form."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.core.clocks import MAX_COUNTER, Dot, HlcStamp, VectorClock
from kvactors.core.context import MAX_CONTEXT_ENTRIES, MAX_NODE_NAME_BYTES, encode_context
from kvactors.core.versions import (
    EMPTY_STATE,
    MAX_WIRE_VERSIONS,
    KeyState,
    Version,
    blind_write,
    coordinate_write,
    merge_states,
    purge_tombstones,
    state_from_wire,
    state_to_wire,
    supersedes,
)

NODES = ("a", "b", "c", "d")

counter_maps = st.dictionaries(st.sampled_from(NODES), st.integers(0, 4))
clocks = counter_maps.map(VectorClock.from_dict)


def stamp(wall_ms: int, node: str = "a", logical: int = 0) -> HlcStamp:
    return HlcStamp(wall_ms, logical, node)


def clock(**counters: int) -> VectorClock:
    return VectorClock.from_dict(counters)


# ----------------------------------------------------------------------- dotted versions
#
# Small domains on purpose: arbitrary states then often share dots, stamps and clocks, which
# is where a join that is only "usually" commutative would show it.

# Generating states dominates these tests' runtime; 30 examples each keeps the file fast.
FEW = settings(max_examples=30)

values = st.none() | st.sampled_from((b"", b"x", b"y"))
dots = st.builds(Dot, st.sampled_from(NODES), st.integers(1, 5))
small_stamps = st.builds(HlcStamp, st.integers(0, 5), st.integers(0, 2), st.sampled_from(NODES))
versions = st.builds(Version, values, dots, clocks, small_stamps)
key_states = st.builds(KeyState.from_versions, st.lists(versions, max_size=5), clocks)


def reference_merge(first: KeyState, second: KeyState) -> tuple[VectorClock, set[Version]]:
    """The join computed from the definition, with sets instead of canonical tuples."""
    obsolete = VectorClock.from_dict(
        {node: max(first.obsolete.counter(node), second.obsolete.counter(node)) for node in NODES}
    )
    survivors = {
        version
        for version in (*first.versions, *second.versions)
        if obsolete.counter(version.dot.node) < version.dot.counter
    }
    return obsolete, survivors


def is_canonical(state: KeyState) -> bool:
    try:
        KeyState(state.obsolete, state.versions)  # the checking constructor
    except ValueError:
        return False
    return True


def test_dot_is_covered_by_a_clock_that_counts_it() -> None:
    assert Dot("a", 2).covered_by(clock(a=2))
    assert Dot("a", 2).covered_by(clock(a=3, b=1))
    assert not Dot("a", 2).covered_by(clock(a=1, b=9))
    assert not Dot("a", 1).covered_by(VectorClock())


@pytest.mark.parametrize(("node", "counter"), [("", 1), ("a", 0), ("a", MAX_COUNTER + 1)])
def test_dot_rejects_bad_fields(node: str, counter: int) -> None:
    with pytest.raises(ValueError):
        Dot(node, counter)


def test_version_rejects_a_non_bytes_value() -> None:
    with pytest.raises(ValueError):
        Version("text", Dot("a", 1), VectorClock(), stamp(1))  # type: ignore[arg-type]
    assert Version(None, Dot("a", 1), VectorClock(), stamp(1)).tombstone
    assert not Version(b"", Dot("a", 1), VectorClock(), stamp(1)).tombstone


@FEW
@given(st.lists(versions, max_size=5), clocks, st.randoms())
def test_from_versions_is_canonical_whatever_the_input_order(
    candidates: list[Version], obsolete: VectorClock, rng: random.Random
) -> None:
    state = KeyState.from_versions(candidates, obsolete)
    shuffled = list(candidates) * 2
    rng.shuffle(shuffled)
    assert KeyState.from_versions(shuffled, obsolete) == state
    assert is_canonical(state)
    assert set(state.versions) == {v for v in candidates if not v.dot.covered_by(obsolete)}
    assert [v.stamp for v in state.versions] == sorted(
        (v.stamp for v in state.versions), reverse=True
    )


def test_constructor_rejects_non_canonical_states() -> None:
    old = Version(b"old", Dot("a", 1), VectorClock(), stamp(1))
    new = Version(b"new", Dot("b", 1), VectorClock(), stamp(2))
    assert KeyState(VectorClock(), (new, old)).winner == new
    with pytest.raises(ValueError):
        KeyState(VectorClock(), (old, new))  # oldest first
    with pytest.raises(ValueError):
        KeyState(VectorClock(), (new, new))  # duplicate
    with pytest.raises(ValueError):
        KeyState(clock(a=1), (new, old))  # `old` is obsolete
    with pytest.raises(ValueError):
        KeyState(VectorClock(), [new])  # type: ignore[arg-type]


@FEW
@given(key_states, key_states)
def test_merge_states_is_commutative(a: KeyState, b: KeyState) -> None:
    assert merge_states(a, b) == merge_states(b, a)


@FEW
@given(key_states, key_states, key_states)
def test_merge_states_is_associative(a: KeyState, b: KeyState, c: KeyState) -> None:
    assert merge_states(merge_states(a, b), c) == merge_states(a, merge_states(b, c))


@FEW
@given(key_states)
def test_merge_states_is_idempotent(a: KeyState) -> None:
    assert merge_states(a, a) == a
    assert merge_states(a, EMPTY_STATE) == a
    assert merge_states(EMPTY_STATE, a) == a


@FEW
@given(key_states, key_states)
def test_merge_states_matches_the_definition_and_is_canonical(a: KeyState, b: KeyState) -> None:
    merged = merge_states(a, b)
    assert (merged.obsolete, set(merged.versions)) == reference_merge(a, b)
    assert is_canonical(merged)
    # An upper bound: merging either input in again changes nothing.
    assert merge_states(merged, a) == merged
    assert merge_states(b, merged) == merged


# A reachable history: three replicas, clients that read a replica (or reuse an old read,
# or write blind), writes through random coordinating replicas, and random syncs.


@dataclass(frozen=True, slots=True)
class Write:
    version: Version
    context: VectorClock


REPLICAS = ("a", "b", "c")


@st.composite
def reachable_histories(draw: st.DrawFn) -> tuple[dict[str, KeyState], list[Write]]:
    states = dict.fromkeys(REPLICAS, EMPTY_STATE)
    reads: list[VectorClock] = [VectorClock()]
    writes: list[Write] = []
    for step in range(draw(st.integers(1, 14))):
        action = draw(st.sampled_from(("read", "write", "write", "sync")))
        if action == "read":
            reads.append(states[draw(st.sampled_from(REPLICAS))].context)
        elif action == "sync":
            source, target = draw(st.sampled_from(REPLICAS)), draw(st.sampled_from(REPLICAS))
            states[target] = merge_states(states[target], states[source])
        else:
            node = draw(st.sampled_from(REPLICAS))
            context = draw(st.sampled_from(reads))
            value = None if draw(st.booleans()) else f"v{step}".encode()
            before = states[node]
            states[node] = coordinate_write(before, node, context, value, stamp(step, node))
            (new,) = set(states[node].versions) - set(before.versions)
            writes.append(Write(new, context))
    return states, writes


def check_only_superseded_writes_are_gone(
    states: dict[str, KeyState], writes: list[Write]
) -> KeyState:
    final = EMPTY_STATE
    for state in states.values():
        final = merge_states(final, state)
    superseded = {
        write.version
        for write in writes
        if any(write.version.dot.covered_by(other.context) for other in writes)
    }
    assert set(final.versions) == {write.version for write in writes} - superseded
    return final


@given(reachable_histories())
@settings(max_examples=100)
def test_reconciliation_never_drops_a_version_that_is_not_dominated(
    history: tuple[dict[str, KeyState], list[Write]],
) -> None:
    states, writes = history
    dots = [write.version.dot for write in writes]
    assert len(set(dots)) == len(dots)  # every write got a fresh dot
    final = check_only_superseded_writes_are_gone(states, writes)
    # Replicas converge whatever order they sync in.
    for order in itertools.permutations(states.values()):
        converged = EMPTY_STATE
        for state in order:
            converged = merge_states(state, converged)
        assert converged == final


def test_two_writes_with_the_same_context_through_the_same_node_are_siblings() -> None:
    # The case a plain vector clock with a coordinator entry gets wrong: both writes get
    # {a: 2}, so the second hides the first.
    first = coordinate_write(EMPTY_STATE, "a", VectorClock(), b"v1", stamp(1))
    context = first.context
    left = coordinate_write(first, "a", context, b"left", stamp(2))
    both = coordinate_write(left, "a", context, b"right", stamp(3))
    assert [v.value for v in both.versions] == [b"right", b"left"]
    assert [v.dot for v in both.versions] == [Dot("a", 3), Dot("a", 2)]
    # Through another replica and back: still both, and a read-then-write supersedes both.
    elsewhere = merge_states(EMPTY_STATE, left)
    elsewhere = coordinate_write(elsewhere, "b", context, b"other", stamp(4, "b"))
    joined = merge_states(both, elsewhere)
    assert {v.value for v in joined.versions} == {b"left", b"right", b"other"}
    resolved = coordinate_write(joined, "c", joined.context, b"resolved", stamp(5, "c"))
    assert [v.value for v in resolved.versions] == [b"resolved"]
    history = {"a": both, "b": elsewhere, "c": resolved}
    writes = [
        Write(first.versions[0], VectorClock()),
        Write(left.versions[0], context),
        Write(both.versions[0], context),
        Write(next(v for v in elsewhere.versions if v.value == b"other"), context),
        Write(resolved.versions[0], joined.context),
    ]
    assert check_only_superseded_writes_are_gone(history, writes) == resolved


@FEW
@given(key_states, st.sampled_from(NODES), values)
def test_a_write_with_the_context_of_a_read_supersedes_everything_read(
    state: KeyState, node: str, value: bytes | None
) -> None:
    written = coordinate_write(state, node, state.context, value, stamp(9, node))
    (new,) = written.versions
    assert new.value == value and new.past == state.context and new.tombstone == (value is None)
    assert all(old.dot.covered_by(written.obsolete) for old in state.versions)


@FEW
@given(key_states, key_states, st.sampled_from(NODES), values)
def test_a_write_supersedes_exactly_what_its_context_covers(
    read: KeyState, other: KeyState, node: str, value: bytes | None
) -> None:
    # The coordinator knows `read` and more; the client saw only `read`.
    local = merge_states(read, other)
    written = coordinate_write(local, node, read.context, value, stamp(9, node))
    (new,) = set(written.versions) - set(local.versions)
    kept = set(written.versions) - {new}
    assert kept == {v for v in local.versions if not v.dot.covered_by(read.context)}
    assert not any(v.dot.covered_by(read.context) for v in kept)


@FEW
@given(key_states, st.sampled_from(NODES), clocks)
def test_new_dots_are_fresh(state: KeyState, node: str, context: VectorClock) -> None:
    written = coordinate_write(state, node, context, b"v", stamp(9, node))
    (new,) = set(written.versions) - set(state.versions)
    assert new.dot.node == node
    assert not new.dot.covered_by(state.context.merge(context))
    assert new.dot.counter == 1 + max(state.context.counter(node), context.counter(node))


def test_min_counter_raises_the_new_dot() -> None:
    written = coordinate_write(EMPTY_STATE, "a", VectorClock(), b"v", stamp(1), min_counter=40)
    assert written.versions[0].dot == Dot("a", 40)
    again = coordinate_write(written, "a", VectorClock(), b"w", stamp(2), min_counter=7)
    assert again.versions[0].dot == Dot("a", 41)


@FEW
@given(key_states)
def test_winner_is_the_highest_stamp_and_live_skips_tombstones(state: KeyState) -> None:
    if not state.versions:
        assert state.winner is None and state.highest_stamp() is None and state.live == ()
        return
    assert state.winner is not None
    assert state.winner.stamp == max(v.stamp for v in state.versions)
    assert state.highest_stamp() == state.winner.stamp
    assert list(state.live) == [v for v in state.versions if v.value is not None]


def test_winner_ties_on_wall_time_go_to_logical_then_node() -> None:
    base = coordinate_write(EMPTY_STATE, "a", VectorClock(), b"a", stamp(5, "a", logical=1))
    with_b = coordinate_write(base, "b", VectorClock(), b"b", stamp(5, "b", logical=1))
    with_c = coordinate_write(with_b, "c", VectorClock(), b"c", stamp(5, "c", logical=0))
    assert [v.value for v in with_c.versions] == [b"b", b"a", b"c"]
    assert with_c.winner is not None and with_c.winner.value == b"b"


@FEW
@given(key_states)
def test_live_values_are_the_live_values_newest_first_each_once(state: KeyState) -> None:
    expected: list[bytes] = []
    for version in state.live:
        assert version.value is not None
        if version.value not in expected:
            expected.append(version.value)
    assert state.live_values() == expected


def test_live_values_name_a_value_written_twice_once_and_skip_tombstones() -> None:
    state = coordinate_write(EMPTY_STATE, "a", VectorClock(), b"x", stamp(1, "a"))
    state = coordinate_write(state, "b", VectorClock(), b"x", stamp(2, "b"))  # sent twice
    state = coordinate_write(state, "c", VectorClock(), None, stamp(3, "c"))  # a delete
    state = coordinate_write(state, "d", VectorClock(), b"y", stamp(4, "d"))
    assert len(state.versions) == 4
    assert state.live_values() == [b"y", b"x"]
    assert coordinate_write(EMPTY_STATE, "a", VectorClock(), None, stamp(1)).live_values() == []
    assert EMPTY_STATE.live_values() == []


@FEW
@given(key_states)
def test_context_covers_everything_in_the_state(state: KeyState) -> None:
    context = state.context
    assert context.descends(state.obsolete)
    for version in state.versions:
        assert version.dot.covered_by(context)
        assert context.descends(version.past)
    assert state.is_empty == (state == EMPTY_STATE)


def tombstone_state(*deleted_at: int, live_at: int | None = None) -> KeyState:
    state = EMPTY_STATE
    for index, wall_ms in enumerate(deleted_at):
        state = coordinate_write(state, NODES[index], VectorClock(), None, stamp(wall_ms))
    if live_at is not None:
        state = coordinate_write(state, "d", VectorClock(), b"v", stamp(live_at))
    return state


@pytest.mark.parametrize(
    ("state", "now_ms", "purged"),
    [
        (tombstone_state(100), 200, True),  # exactly grace_ms old
        (tombstone_state(100), 199, False),  # young
        (tombstone_state(100, 150), 250, True),
        (tombstone_state(100, 150), 249, False),  # one still young
        (tombstone_state(100, live_at=50), 1000, False),  # a concurrent live value
        (EMPTY_STATE, 1000, False),
        (KeyState(clock(a=3)), 1000, False),  # nothing to purge, only a clock
    ],
)
def test_purge_tombstones(state: KeyState, now_ms: int, purged: bool) -> None:
    result = purge_tombstones(state, now_ms, grace_ms=100)
    assert result == (EMPTY_STATE if purged else state)


@FEW
@given(key_states, st.integers(0, 12), st.integers(0, 5))
def test_purge_tombstones_matches_its_rule(state: KeyState, now_ms: int, grace_ms: int) -> None:
    expected = bool(state.versions) and all(
        v.tombstone and v.stamp.wall_ms + grace_ms <= now_ms for v in state.versions
    )
    assert (purge_tombstones(state, now_ms, grace_ms) == EMPTY_STATE) == (
        expected or state == EMPTY_STATE
    )
    if not expected:
        assert purge_tombstones(state, now_ms, grace_ms) is state


# ---------------------------------------------------------------------------- wire format

BUILTIN_LEAVES = (str, int, bytes, type(None))


def only_lists_and_leaves(value: object) -> bool:
    if isinstance(value, list):
        return all(only_lists_and_leaves(item) for item in value)
    return isinstance(value, BUILTIN_LEAVES) and not isinstance(value, bool)


names = st.sampled_from(NODES) | st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
wide_states = st.builds(
    KeyState.from_versions,
    st.lists(
        st.builds(
            Version,
            st.none() | st.binary(max_size=20),
            st.builds(Dot, names, st.integers(1, MAX_COUNTER)),
            st.dictionaries(names, st.integers(0, MAX_COUNTER), max_size=3).map(
                VectorClock.from_dict
            ),
            st.builds(HlcStamp, st.integers(0, MAX_COUNTER), st.integers(0, MAX_COUNTER), names),
        ),
        max_size=4,
    ),
    st.dictionaries(names, st.integers(0, MAX_COUNTER), max_size=3).map(VectorClock.from_dict),
)


@FEW
@given(key_states | wide_states)
def test_state_wire_roundtrip(state: KeyState) -> None:
    wire = state_to_wire(state)
    assert only_lists_and_leaves(wire)
    assert state_from_wire(wire) == state


def test_wire_layout() -> None:
    state = coordinate_write(EMPTY_STATE, "a", clock(c=2), b"v", stamp(7, "a", logical=1))
    state = merge_states(
        state, coordinate_write(EMPTY_STATE, "b", VectorClock(), None, stamp(3, "c"))
    )
    assert state_to_wire(state) == [
        ["c", 2],
        [[b"v", "a", 1, ["c", 2], 7, 1, None], [None, "b", 1, [], 3, 0, "c"]],
    ]


def test_state_from_wire_canonicalizes() -> None:
    old = [b"old", "a", 1, [], 1, 0, None]
    new = [b"new", "a", 2, ["a", 1], 2, 0, None]
    state = state_from_wire([[], [old, new, old]])
    assert [v.value for v in state.versions] == [b"new", b"old"]
    assert state_from_wire([["a", 1], [old, new]]).versions == state.versions[:1]
    # The stamp node may be spelled out even when it is the dot's node.
    assert state_from_wire([[], [[b"new", "a", 2, ["a", 1], 2, 0, "a"], old]]) == state


VALID_VERSION = [b"v", "a", 1, ["b", 1], 5, 0, None]


@pytest.mark.parametrize(
    "wire",
    [
        None,
        {"obsolete": []},
        [[]],
        [[], [], []],
        [[], None],
        [{"a": 1}, []],  # clocks are flat lists here
        [["a"], []],
        [["a", 0], []],
        [["a", True], []],
        [["a", 1.0], []],
        [["a", MAX_COUNTER + 1], []],
        [["b", 1, "a", 1], []],  # unsorted
        [["a", 1, "a", 2], []],  # repeated
        [["", 1], []],
        [[1, 1], []],
        [["x" * (MAX_NODE_NAME_BYTES + 1), 1], []],
        [["\ud800", 1], []],  # not encodable as UTF-8
        [["a", 1] * (MAX_CONTEXT_ENTRIES + 1), []],
        [[], [VALID_VERSION[:6]]],
        [[], [[*VALID_VERSION, None]]],
        [[], [["v", *VALID_VERSION[1:]]]],
        [[], [[b"v", "", *VALID_VERSION[2:]]]],
        [[], [[b"v", 7, *VALID_VERSION[2:]]]],
        [[], [[*VALID_VERSION[:2], 0, *VALID_VERSION[3:]]]],
        [[], [[*VALID_VERSION[:2], True, *VALID_VERSION[3:]]]],
        [[], [[*VALID_VERSION[:3], ["b", 0], *VALID_VERSION[4:]]]],
        [[], [[*VALID_VERSION[:4], -1, 0, None]]],
        [[], [[*VALID_VERSION[:4], 5, False, None]]],
        [[], [[*VALID_VERSION[:4], 5, 0, 3]]],
        [[], [[*VALID_VERSION[:4], 5, MAX_COUNTER + 1, None]]],
        [[], [VALID_VERSION] * (MAX_WIRE_VERSIONS + 1)],
    ],
)
def test_state_from_wire_rejects_malformed(wire: object) -> None:
    with pytest.raises(ValueError):
        state_from_wire(wire)


wire_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-2, 3)
    | st.sampled_from(("a", "b", "", MAX_COUNTER, MAX_COUNTER + 1, 1.5, b"v"))
)
wire_junk = st.recursive(
    wire_leaves,
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=15,
)


@FEW
@given(wire_junk)
def test_state_from_wire_fuzz_raises_only_value_error(wire: object) -> None:
    try:
        state = state_from_wire(wire)
    except ValueError:
        return
    assert is_canonical(state)


@FEW
@given(key_states, st.data())
def test_mutated_wire_decodes_canonically_or_raises(state: KeyState, data: st.DataObject) -> None:
    wire = state_to_wire(state)
    # Walk to a random list inside the wire form and replace one of its items with junk.
    target: list[object] = wire
    while True:
        index = data.draw(st.integers(0, max(len(target) - 1, 0)))
        if not target:
            target.append(data.draw(wire_junk))
            break
        item = target[index]
        if isinstance(item, list) and data.draw(st.booleans()):
            target = item
            continue
        target[index] = data.draw(wire_junk)
        break
    try:
        decoded = state_from_wire(wire)
    except ValueError:
        return
    assert is_canonical(decoded)


@given(st.integers(0, 6), st.integers(0, 2**40))
def test_blind_write_equals_a_write_with_the_replicas_own_context(writes: int, floor: int) -> None:
    state = EMPTY_STATE
    for index in range(writes):  # a key written by two nodes, concurrently at times
        node = "ab"[index % 2]
        past = state.context if index % 3 else VectorClock()
        state = coordinate_write(state, node, past, b"v%d" % index, HlcStamp(index, 0, node))
    stamp = HlcStamp(99, 0, "a")
    expected = coordinate_write(state, "a", state.context, b"new", stamp, min_counter=floor)
    assert blind_write(state.context, "a", b"new", stamp, floor) == expected


# ----------------------------------------------------------------------------- fast paths
#
# The shortcuts of the write path against the general computations they stand for: a
# merge where one side has seen all the other holds, the context of one version, the
# wire form of a past that is the obsolete clock, varints of clock-sized counters.


def reference_context(state: KeyState) -> VectorClock:
    """The context by its definition: the entry-wise maximum of all the state has seen."""
    counters = dict(state.obsolete.entries)
    for version in state.versions:
        for node, count in (*version.past.entries, (version.dot.node, version.dot.counter)):
            counters[node] = max(counters.get(node, 0), count)
    return VectorClock.from_dict(counters)


def blind_written(state: KeyState, node: str, value: bytes | None, at: HlcStamp) -> KeyState:
    if state.context.counter(node) == MAX_COUNTER:
        return state  # no fresh dot left for `node`
    return blind_write(state.context, node, value, at)


blind_states = st.builds(
    blind_written,
    key_states | wide_states,
    st.sampled_from(NODES),
    values,
    small_stamps,
)


@FEW
@given(key_states | wide_states | blind_states)
def test_context_is_exactly_the_maximum_of_all_the_state_has_seen(state: KeyState) -> None:
    assert state.context == reference_context(state)
    assert state.encoded_context() == encode_context(reference_context(state))
    assert state.context == reference_context(state)  # asked again: the kept one


@st.composite
def state_and_successor(draw: st.DrawFn) -> tuple[KeyState, KeyState]:
    """A state and a later state of the key: writes on top of it, blind, with its context
    or with another context, and then perhaps a merge with anything."""
    state = draw(key_states)
    later = state
    for _ in range(draw(st.integers(1, 3))):
        node, value, at = draw(st.sampled_from(NODES)), draw(values), draw(small_stamps)
        match draw(st.sampled_from(("blind", "read", "other"))):
            case "blind":
                later = blind_write(later.context, node, value, at)
            case "read":
                later = coordinate_write(later, node, later.context, value, at)
            case _:
                later = coordinate_write(later, node, draw(clocks), value, at)
    if draw(st.booleans()):
        later = merge_states(later, draw(key_states))
    return state, later


def general_merge(first: KeyState, second: KeyState) -> KeyState:
    """The join from the definition, in canonical form (no shortcut of `merge_states`)."""
    obsolete, survivors = reference_merge(first, second)
    return KeyState.from_versions(survivors, obsolete)


@FEW
@given(state_and_successor() | st.tuples(key_states, key_states))
def test_merge_shortcuts_equal_the_general_join(pair: tuple[KeyState, KeyState]) -> None:
    first, second = pair
    assert merge_states(first, second) == general_merge(first, second)
    assert merge_states(second, first) == general_merge(first, second)


@FEW
@given(state_and_successor())
def test_a_state_that_has_seen_the_other_is_the_join(pair: tuple[KeyState, KeyState]) -> None:
    state, later = pair
    if later.obsolete.descends(state.context):  # it supersedes all `state` holds
        assert merge_states(state, later) is later
        assert merge_states(later, state) is later


@FEW
@given(state_and_successor() | st.tuples(key_states, key_states))
def test_supersedes_is_its_definition_and_then_the_join_is_that_state(
    pair: tuple[KeyState, KeyState],
) -> None:
    state, later = pair
    context = state.context
    news = later.obsolete.descends(context) and any(
        not version.dot.covered_by(context) for version in later.versions
    )
    assert supersedes(later, context) == news
    if news:  # the replica's merge takes `later` as the join, and writes it
        assert merge_states(state, later) == later
        assert later != state


@FEW
@given(key_states | wide_states, st.sampled_from(NODES), values, st.integers(0, 9))
def test_blind_write_equals_a_write_with_the_context_on_any_state(
    state: KeyState, node: str, value: bytes | None, floor: int
) -> None:
    if state.context.counter(node) == MAX_COUNTER:
        return  # no fresh dot left for `node`
    at = stamp(7, node)
    written = blind_write(state.context, node, value, at, floor)
    assert written == coordinate_write(state, node, state.context, value, at, min_counter=floor)
    assert written.context == reference_context(written)


def reference_wire(state: KeyState) -> list[object]:
    def flat(clock: VectorClock) -> list[object]:
        return [item for entry in clock.entries for item in entry]

    return [
        flat(state.obsolete),
        [
            [
                v.value,
                v.dot.node,
                v.dot.counter,
                flat(v.past),
                v.stamp.wall_ms,
                v.stamp.logical,
                None if v.stamp.node == v.dot.node else v.stamp.node,
            ]
            for v in state.versions
        ],
    ]


@FEW
@given(key_states | wide_states | blind_states)
def test_state_to_wire_matches_the_layout_and_shares_no_list(state: KeyState) -> None:
    wire = state_to_wire(state)
    assert wire == reference_wire(state)
    obsolete, versions = wire
    assert isinstance(obsolete, list) and isinstance(versions, list)
    assert all(version[3] is not obsolete for version in versions)
