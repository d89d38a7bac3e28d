"""Versions of a stored key: dotted version sets, made of the clocks of kvactors.core.clocks.

Each replica keeps, per key, a `KeyState`: the surviving versions (siblings) of the key and
an `obsolete` vector clock of the writes known to be superseded. Every write is one `Dot`
(the coordinating replica and its counter for the key) and remembers the client's causal
context (`past`) it superseded, in the spirit of dotted version vectors (Preguica et al.):

- `coordinate_write` is what the coordinating replica does for a client put or delete;
  two concurrent writes are always kept as siblings, even through the same coordinator
  with the same context, and a write with the context of a read supersedes what was read.
- `merge_states` joins two replicas' states; it is a true lattice join (commutative,
  associative, idempotent), so replication, read repair and anti-entropy converge.
- `KeyState.context` is the causal context a `get` hands back, `KeyState.winner` the
  version a reader sees (highest `HlcStamp`). Deletes are tombstones; `purge_tombstones`
  forgets a deleted key after a grace period.
- `state_to_wire` / `state_from_wire` turn a state into builtin types for peer messages
  and storage records (`kvactors.storage.records`); kvactors.core.context turns a
  clock into the opaque bytes clients carry. `check_state_bounds` holds a state from
  outside to what honest replicas with clocks at most so far ahead could have made.

Pure logic: no I/O, no clock reads (physical time comes in as an argument), no msgpack.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, pairwise
from typing import Any, TypeAlias

from kvactors.core.clocks import (
    MAX_COUNTER,
    MAX_STAMP_LOGICAL,
    Dot,
    HlcStamp,
    VectorClock,
    counter_ceiling,
    first_counter_above,
)
from kvactors.core.context import MAX_CONTEXT_ENTRIES, MAX_NODE_NAME_BYTES, encode_context

__all__ = [
    "EMPTY_STATE",
    "MAX_WIRE_VERSIONS",
    "KeyState",
    "Version",
    "blind_write",
    "check_state_bounds",
    "coordinate_write",
    "flat_entries",
    "merge_states",
    "purge_tombstones",
    "state_from_wire",
    "state_to_wire",
    "supersedes",
    "trusted_clock_from_flat",
    "trusted_state_from_parts",
    "trusted_state_from_wire",
]


# ------------------------------------------------------------------------- dotted versions

_EMPTY_CLOCK = VectorClock()


@dataclass(frozen=True, slots=True)
class Version:
    """One write: its encoded value (None for a tombstone), the write event `dot`, the
    client's causal context `past` (the writes it supersedes) and its HLC `stamp`.

    A tombstone's deletion time, for the purge grace period, is `stamp.wall_ms`.
    """

    value: bytes | None
    dot: Dot
    past: VectorClock
    stamp: HlcStamp

    def __post_init__(self) -> None:
        if self.value is not None and not isinstance(self.value, bytes):
            raise ValueError("a version's value is bytes, or None for a tombstone")
        if not isinstance(self.dot, Dot) or not isinstance(self.past, VectorClock):
            raise ValueError("a version has a Dot and a VectorClock past")
        if not isinstance(self.stamp, HlcStamp):
            raise ValueError("a version has an HlcStamp")

    @property
    def tombstone(self) -> bool:
        return self.value is None


_OrderKey: TypeAlias = tuple[int, int, str, str, int, bool, bytes, tuple[tuple[str, int], ...]]


def _order_key(version: Version) -> _OrderKey:
    # Stamp first (newest first means winner first); the remaining fields make the order
    # total, so distinct versions never tie and every replica sorts siblings alike.
    stamp, dot, value = version.stamp, version.dot, version.value
    return (
        stamp.wall_ms,
        stamp.logical,
        stamp.node,
        dot.node,
        dot.counter,
        value is not None,
        value or b"",
        version.past.entries,
    )


@dataclass(frozen=True, slots=True)
class KeyState:
    """One replica's knowledge of one key: a join-semilattice element (see `merge_states`).

    `obsolete` covers the dots of every write known to be superseded; `versions` are the
    surviving writes (siblings). The form is canonical: no version's dot is covered by
    `obsolete`, and versions are distinct and sorted newest stamp first (ties broken by a
    total order on all fields). So two replicas know the same exactly when their states
    are `==`. The constructor checks this form; `from_versions` builds it from any input.
    """

    obsolete: VectorClock = _EMPTY_CLOCK
    versions: tuple[Version, ...] = ()
    # The context and its encoding, each made on first use and then kept: a record holds
    # both, and readers of the state (a get's reply, the coordinator) ask again.
    _context: VectorClock | None = field(default=None, init=False, repr=False, compare=False)
    _encoded_context: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.obsolete, VectorClock) or not isinstance(self.versions, tuple):
            raise ValueError("a key state is a VectorClock and a tuple of versions")
        if not all(isinstance(version, Version) for version in self.versions):
            raise ValueError("a key state's versions are Version instances")
        if any(version.dot.covered_by(self.obsolete) for version in self.versions):
            raise ValueError("a version whose dot the obsolete clock covers is superseded")
        keys = [_order_key(version) for version in self.versions]
        if any(newer <= older for newer, older in pairwise(keys)):
            raise ValueError("versions must be distinct and sorted newest stamp first")

    @classmethod
    def from_versions(
        cls, versions: Iterable[Version], obsolete: VectorClock = _EMPTY_CLOCK
    ) -> KeyState:
        """The canonical state of `obsolete` and `versions`: drops duplicates and the
        versions `obsolete` covers, sorts the rest."""
        return _canonical_state(obsolete, tuple(versions))

    @property
    def winner(self) -> Version | None:
        """The version a reader sees: the highest stamp (may be a tombstone); None if none."""
        return self.versions[0] if self.versions else None

    @property
    def live(self) -> tuple[Version, ...]:
        """The versions that are not tombstones, newest first."""
        versions = self.versions
        if len(versions) == 1:  # the usual state: no new tuple needed
            return versions if versions[0].value is not None else ()
        return tuple(version for version in versions if version.value is not None)

    def live_values(self) -> list[bytes]:
        """The live siblings' values, newest first, each distinct value once (a write
        sent twice makes two siblings of one value)."""
        versions = self.versions
        if len(versions) == 1:  # the usual state: nothing to deduplicate
            value = versions[0].value
            return [] if value is None else [value]
        return list(dict.fromkeys(v.value for v in versions if v.value is not None))

    @property
    def context(self) -> VectorClock:
        """What a client that read this state has seen: a write carrying it supersedes
        every version here. Computed once per state."""
        context = self._context
        if context is None:
            context = _context_of(self.obsolete, self.versions)
            _set_state_context(self, context)
        return context

    def encoded_context(self) -> bytes:
        """`encode_context(self.context)`, computed once per state."""
        encoded = self._encoded_context
        if encoded is None:
            context = self._context  # a written state has it already: no property call
            encoded = encode_context(self.context if context is None else context)
            _set_state_encoded_context(self, encoded)
        return encoded

    @property
    def is_empty(self) -> bool:
        """Nothing known about the key: no version and nothing superseded."""
        return not self.versions and not self.obsolete.entries

    def highest_stamp(self) -> HlcStamp | None:
        """The highest stamp stored (to restore a node's HLC after a restart)."""
        return self.versions[0].stamp if self.versions else None


EMPTY_STATE = KeyState()


# Trusted constructors: build instances through their slot descriptors, skipping
# __init__ and __post_init__. Only for values this module has just validated or computed
# in canonical form; every put runs through them (decode, merge, encode a record).
_new = object.__new__
_set_clock_entries = VectorClock.__dict__["entries"].__set__
_set_dot_node = Dot.__dict__["node"].__set__
_set_dot_counter = Dot.__dict__["counter"].__set__
_set_stamp_wall_ms = HlcStamp.__dict__["wall_ms"].__set__
_set_stamp_logical = HlcStamp.__dict__["logical"].__set__
_set_stamp_node = HlcStamp.__dict__["node"].__set__
_set_version_value = Version.__dict__["value"].__set__
_set_version_dot = Version.__dict__["dot"].__set__
_set_version_past = Version.__dict__["past"].__set__
_set_version_stamp = Version.__dict__["stamp"].__set__
_set_state_obsolete = KeyState.__dict__["obsolete"].__set__
_set_state_versions = KeyState.__dict__["versions"].__set__
_set_state_context = KeyState.__dict__["_context"].__set__
_set_state_encoded_context = KeyState.__dict__["_encoded_context"].__set__


def _trusted_clock(entries: tuple[tuple[str, int], ...]) -> VectorClock:
    clock: VectorClock = _new(VectorClock)
    _set_clock_entries(clock, entries)
    return clock


def _trusted_dot(node: str, counter: int) -> Dot:
    dot: Dot = _new(Dot)
    _set_dot_node(dot, node)
    _set_dot_counter(dot, counter)
    return dot


def _trusted_version(value: bytes | None, dot: Dot, past: VectorClock, stamp: HlcStamp) -> Version:
    version: Version = _new(Version)
    _set_version_value(version, value)
    _set_version_dot(version, dot)
    _set_version_past(version, past)
    _set_version_stamp(version, stamp)
    return version


def _trusted_state(obsolete: VectorClock, versions: tuple[Version, ...]) -> KeyState:
    state: KeyState = _new(KeyState)
    _set_state_obsolete(state, obsolete)
    _set_state_versions(state, versions)
    _set_state_context(state, None)
    _set_state_encoded_context(state, None)
    return state


def _join_clocks(first: VectorClock, second: VectorClock) -> VectorClock:
    """`first.merge(second)`, without the work when one side is empty or they are equal."""
    if not second.entries or first.entries == second.entries:
        return first
    if not first.entries:
        return second
    counters = dict(first.entries)
    for node, count in second.entries:
        if count > counters.get(node, 0):
            counters[node] = count
    return _trusted_clock(tuple(sorted(counters.items())))


def _with_at_least(
    entries: tuple[tuple[str, int], ...], node: str, counter: int
) -> tuple[tuple[str, int], ...]:
    """Sorted clock `entries` with `node`'s counter raised to at least `counter`."""
    for index, (entry_node, entry_counter) in enumerate(entries):
        if entry_node < node:
            continue
        if entry_node != node:
            return (*entries[:index], (node, counter), *entries[index:])
        if entry_counter >= counter:
            return entries
        return (*entries[:index], (node, counter), *entries[index + 1 :])
    return (*entries, (node, counter))


def _context_of(obsolete: VectorClock, versions: tuple[Version, ...]) -> VectorClock:
    """`KeyState.context`: the entry-wise maximum of `obsolete`, every past and every dot."""
    if not versions:
        return obsolete
    if len(versions) == 1:
        # The usual state, and after a blind write its past is its obsolete clock, so this
        # is one clock with one entry raised rather than a dictionary and a sort.
        only = versions[0]
        seen = _join_clocks(obsolete, only.past)
        dot = only.dot
        return _trusted_clock(_with_at_least(seen.entries, dot.node, dot.counter))
    counters = dict(obsolete.entries)
    for version in versions:
        for node, count in version.past.entries:
            if count > counters.get(node, 0):
                counters[node] = count
        node, count = version.dot.node, version.dot.counter
        if count > counters.get(node, 0):
            counters[node] = count
    return _trusted_clock(tuple(sorted(counters.items())))


def _canonical_state(obsolete: VectorClock, candidates: Sequence[Version]) -> KeyState:
    """The canonical state: candidates not covered by `obsolete`, distinct, newest first."""
    if len(candidates) == 1:  # the usual record: one version, nothing to sort
        only = candidates[0]
        dot = only.dot
        covered = obsolete.counter(dot.node) >= dot.counter
        return _trusted_state(obsolete, () if covered else (only,))
    limits = dict(obsolete.entries)
    # The order key lists every field, so equal keys mean equal versions (deduplication).
    survivors = {
        _order_key(version): version
        for version in candidates
        if version.dot.counter > limits.get(version.dot.node, 0)
    }
    if len(survivors) == 1:
        return _trusted_state(obsolete, tuple(survivors.values()))
    return _trusted_state(
        obsolete, tuple(survivors[key] for key in sorted(survivors, reverse=True))
    )


def merge_states(first: KeyState, second: KeyState) -> KeyState:
    """The join of two replicas' knowledge of a key.

    The obsolete clocks merge; a version survives when either side has it and the merged
    obsolete clock does not cover it. Commutative, associative and idempotent for every
    pair of states, so replicas converge whatever order they exchange states in.
    """
    if second.is_empty:
        return first
    if first.is_empty:
        return second
    # Replication's usual case: one side has seen all the other holds (a newer write, or
    # the same state sent again), and the join is that side, unchanged. That side is
    # canonical, so none of its versions is covered by its own obsolete clock.
    if _has_seen(second.obsolete, first):
        return second
    if _has_seen(first.obsolete, second):
        return first
    if first == second:
        return first
    return _general_merge(first, second)


def supersedes(state: KeyState, context: VectorClock) -> bool:
    """True when `state` has seen everything a state whose context is `context` holds,
    and holds a write that state lacks: their join (`merge_states`) is `state`, and
    differs from the other. Replication's usual merge, decided from the other state's
    context alone (a record keeps it in front)."""
    seen = state.obsolete.entries
    known = context.entries
    if seen != known:  # the usual case is equal clocks: one tuple compare
        if len(known) > len(seen):  # a node `seen` lacks (counters are >= 1)
            return False
        counters = dict(seen)
        for node, count in known:
            if counters.get(node, 0) < count:
                return False
    for version in state.versions:
        dot = version.dot
        if dot.counter > context.counter(dot.node):
            return True
    return False


def _has_seen(clock: VectorClock, state: KeyState) -> bool:
    """True when `clock` covers `state`'s obsolete clock and every one of its dots, so
    that merging `state` into a state whose obsolete clock is `clock` changes nothing."""
    seen = clock.entries
    obsolete = state.obsolete.entries
    if len(obsolete) > len(seen):  # a node `clock` lacks (counters are >= 1)
        return False
    counters = dict(seen)
    if obsolete != seen:
        for node, count in obsolete:
            if counters.get(node, 0) < count:
                return False
    for version in state.versions:
        dot = version.dot
        if counters.get(dot.node, 0) < dot.counter:
            return False
    return True


def _general_merge(first: KeyState, second: KeyState) -> KeyState:
    """`merge_states` by the definition, without its shortcuts."""
    return _canonical_state(
        _join_clocks(first.obsolete, second.obsolete), (*first.versions, *second.versions)
    )


def coordinate_write(
    state: KeyState,
    node: str,
    context: VectorClock,
    value: bytes | None,
    stamp: HlcStamp,
    *,
    min_counter: int = 0,
) -> KeyState:
    """The state after replica `node` coordinates a client write: a put (`value` bytes)
    or a delete (`value` None) that carried causal `context`.

    Everything `context` covers becomes obsolete; the new version gets the dot
    `(node, n)` with `n` above every counter of `node` in the state, so it is a write no
    replica has seen. Two writes with the same context through the same node therefore
    stay siblings (a plain vector clock would let the second hide the first), and a write
    whose context came from reading a state supersedes exactly the versions read.

    `min_counter` is an optional floor for `n`: pass a node-wide counter that never goes
    back (for example one persisted per node) so that a key whose tombstones were purged
    does not reuse a dot a lagging replica still counts as obsolete.
    """
    obsolete = _join_clocks(state.obsolete, context)
    highest = obsolete.counter(node)
    limits = dict(obsolete.entries)
    survivors: list[Version] = []
    for version in state.versions:
        highest = max(highest, version.past.counter(node))
        dot = version.dot
        if dot.node == node:
            highest = max(highest, dot.counter)
        if dot.counter > limits.get(dot.node, 0):
            survivors.append(version)
    counter = max(highest + 1, min_counter)
    if not node or counter > MAX_COUNTER:
        raise ValueError("a dot needs a node name and a counter in range")
    if value is not None and type(value) is not bytes:
        raise ValueError("a version's value is bytes, or None for a tombstone")
    # Every field is known valid here: build without the constructors' checks (hot path).
    written = _trusted_version(value, _trusted_dot(node, counter), context, stamp)
    if not survivors:  # the usual write: it supersedes everything there was
        return _trusted_state(obsolete, (written,))
    return _canonical_state(obsolete, (*survivors, written))


def blind_write(
    context: VectorClock, node: str, value: bytes | None, stamp: HlcStamp, min_counter: int = 0
) -> KeyState:
    """`coordinate_write` of a write without a client context, given only the replica's
    context of the key (`KeyState.context`): it supersedes everything the replica holds,
    so the versions themselves are not needed. Equal to
    `coordinate_write(state, node, state.context, value, stamp, min_counter=...)`."""
    counter, seen = _next_dot(context.entries, node, min_counter)
    if not node or counter > MAX_COUNTER:
        raise ValueError("a dot needs a node name and a counter in range")
    if value is not None and type(value) is not bytes:
        raise ValueError("a version's value is bytes, or None for a tombstone")
    # The commonest write of all: the trusted constructors unrolled, as in
    # `_assembled_version`.
    dot: Dot = _new(Dot)
    _set_dot_node(dot, node)
    _set_dot_counter(dot, counter)
    written: Version = _new(Version)
    _set_version_value(written, value)
    _set_version_dot(written, dot)
    _set_version_past(written, context)
    _set_version_stamp(written, stamp)
    state: KeyState = _new(KeyState)
    _set_state_obsolete(state, context)
    _set_state_versions(state, (written,))
    # Its context is the replica's with the new dot, which its record needs at once.
    _set_state_context(state, _trusted_clock(seen))
    _set_state_encoded_context(state, None)
    return state


def _next_dot(
    entries: tuple[tuple[str, int], ...], node: str, min_counter: int
) -> tuple[int, tuple[tuple[str, int], ...]]:
    """(`max(counter of node + 1, min_counter)`, the sorted clock `entries` with `node`'s
    counter set to it): the dot of a write over a context, and the context after it, in
    one pass over the entries."""
    for index, (entry_node, entry_counter) in enumerate(entries):
        if entry_node < node:
            continue
        if entry_node == node:
            counter = entry_counter + 1
            counter = counter if counter > min_counter else min_counter
            return counter, (*entries[:index], (node, counter), *entries[index + 1 :])
        counter = 1 if min_counter < 1 else min_counter
        return counter, (*entries[:index], (node, counter), *entries[index:])
    counter = 1 if min_counter < 1 else min_counter
    return counter, (*entries, (node, counter))


def trusted_clock_from_flat(flat: list[Any]) -> VectorClock:
    """The clock of a flat `[node, counter, ...]` list this process made itself (no checks)."""
    size = len(flat)
    if size == 2:  # one entry, the clock of a key one node writes: no pairing up
        return _trusted_clock(((flat[0], flat[1]),))
    if not size:
        return _EMPTY_CLOCK
    return _trusted_clock(_pair_up(flat))


def _pair_up(flat: list[Any] | tuple[Any, ...]) -> tuple[tuple[Any, Any], ...]:
    """`[a, 1, b, 2]` as `((a, 1), (b, 2))`; `flat` has an even length."""
    items = iter(flat)
    # One iterator twice pairs consecutive items; `strict=` would cost a keyword parse on
    # every clock, and callers know the length is even.
    return tuple(zip(items, items))  # noqa: B905


def purge_tombstones(state: KeyState, now_ms: int, grace_ms: int) -> KeyState:
    """Forget a deleted key once only tombstones remain and all are `grace_ms` old or more.

    A tombstone beside a live sibling is a concurrent delete and stays; a young tombstone
    stays so replicas that missed the delete learn it instead of resurrecting the value.
    """
    if state.versions and all(
        version.value is None and now_ms - version.stamp.wall_ms >= grace_ms
        for version in state.versions
    ):
        return EMPTY_STATE
    return state


# --------------------------------------------------------------------------- wire format
#
# A key state in builtin types (lists, str, int, bytes, None), for peer messages and
# storage records. A clock is a flat list of its sorted entries: [node, counter, ...].
#
#     state   = [obsolete clock, [version, ...]]
#     version = [value (bytes or None), dot node, dot counter, past clock,
#                stamp wall_ms, stamp logical, stamp node (None: the dot's node)]

MAX_WIRE_VERSIONS = 4096  # a sanity bound on siblings per key in a message or record
_VERSION_FIELDS = 7


def _clock_to_wire(clock: VectorClock) -> list[object]:
    return list(flat_entries(clock.entries))


def flat_entries(entries: tuple[tuple[str, int], ...]) -> tuple[object, ...]:
    """Clock `entries` as one flat tuple `(node, counter, ...)`, the wire form of a clock."""
    # sum() of a few pairs costs a fraction of a chain (every record and message has a
    # few clocks); its copying grows with the square of the count, so not for many.
    if len(entries) <= _FEW_ENTRIES:
        return sum(entries, ())
    return tuple(chain.from_iterable(entries))


_FEW_ENTRIES = 8


def state_to_wire(state: KeyState) -> list[object]:
    """The state as builtin types; `state_from_wire` is its inverse."""
    obsolete = state.obsolete
    obsolete_wire = _clock_to_wire(obsolete)
    versions = state.versions
    if len(versions) == 1:  # the usual state: no comprehension
        return [obsolete_wire, [_version_to_wire(versions[0], obsolete, obsolete_wire)]]
    return [obsolete_wire, [_version_to_wire(v, obsolete, obsolete_wire) for v in versions]]


def _version_to_wire(
    version: Version, obsolete: VectorClock, obsolete_wire: list[object]
) -> list[object]:
    dot, stamp, past = version.dot, version.stamp, version.past
    return [
        version.value,
        dot.node,
        dot.counter,
        # After a blind write the past is the obsolete clock: copy its list, not its entries.
        obsolete_wire.copy() if past is obsolete else _clock_to_wire(past),
        stamp.wall_ms,
        stamp.logical,
        None if stamp.node == dot.node else stamp.node,
    ]


def _malformed(what: str) -> ValueError:
    return ValueError(f"malformed key state: {what}")


def _check_name(node: str) -> None:
    # Short ASCII names (the usual case) are fine as they are: no encoding needed.
    if len(node) <= MAX_NODE_NAME_BYTES and node.isascii():
        return
    try:
        size = len(node.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise _malformed("a node name is not valid UTF-8") from error
    if size > MAX_NODE_NAME_BYTES:
        raise _malformed(f"a node name is over {MAX_NODE_NAME_BYTES} bytes")


def _is_uint64(number: object) -> bool:
    # `type(...) is int` also refuses bool, whose True would pass for a 1.
    return type(number) is int and 0 <= number <= MAX_COUNTER


def _clock_from_wire(data: object) -> VectorClock:
    if not isinstance(data, list | tuple):
        raise _malformed("a clock is a flat list [node, counter, ...]")
    size = len(data)
    if not size:
        return _EMPTY_CLOCK
    if size % 2 or size > 2 * MAX_CONTEXT_ENTRIES:
        raise _malformed(f"a clock has whole entries, at most {MAX_CONTEXT_ENTRIES}")
    entries = _pair_up(data)
    previous = ""
    for node, counter in entries:
        # `node <= previous` refuses empty names, unsorted and repeated ones in one test.
        if type(node) is not str or node <= previous:
            raise _malformed("clock nodes are non-empty str, strictly ascending")
        if len(node) > MAX_NODE_NAME_BYTES or not node.isascii():  # else plainly fine
            _check_name(node)
        if type(counter) is not int or not 1 <= counter <= MAX_COUNTER:
            raise _malformed("a clock counter is an int in 1..2**64-1")
        previous = node
    return _trusted_clock(entries)


def _version_from_wire(data: object, obsolete_wire: object, obsolete: VectorClock) -> Version:
    if not isinstance(data, list | tuple) or len(data) != _VERSION_FIELDS:
        raise _malformed("a version is [value, node, counter, past, wall_ms, logical, node]")
    value, dot_node, counter, past, wall_ms, logical, stamp_node = data
    if value is not None and type(value) is not bytes:
        raise _malformed("a value is bytes or None")
    if type(dot_node) is not str or not dot_node:
        raise _malformed("a dot's node is a non-empty str")
    _check_name(dot_node)
    if not _is_uint64(counter) or not counter:
        raise _malformed("a dot's counter is an int in 1..2**64-1")
    if stamp_node is None:
        stamp_node = dot_node
    elif type(stamp_node) is not str:
        raise _malformed("a stamp's node is a str or None")
    else:
        _check_name(stamp_node)
    if not _is_uint64(wall_ms) or not _is_uint64(logical):
        raise _malformed("a stamp's wall_ms and logical are ints in 0..2**64-1")
    # After a blind write or a read-modify-write the past is the obsolete clock: decode
    # it once.
    past_clock = obsolete if past == obsolete_wire else _clock_from_wire(past)
    return _assembled_version(data, past_clock, stamp_node)


def trusted_state_from_wire(data: Any) -> KeyState:
    """`state_from_wire` for data this process made itself and kept in memory, unchanged:
    no checks. Never for data from a peer or a disk."""
    obsolete_wire, versions_wire = data
    return trusted_state_from_parts(obsolete_wire, versions_wire, None)


def trusted_state_from_parts(
    obsolete_wire: Any, versions_wire: Any, encoded_context: bytes | None
) -> KeyState:
    """`trusted_state_from_wire([obsolete_wire, versions_wire])`, for trusted data only; a
    caller that kept the state's `encoded_context()` beside it (a record does) passes it
    on, so the state need not encode it again. No checks."""
    obsolete = trusted_clock_from_flat(obsolete_wire)
    if len(versions_wire) == 1:  # the usual record: no comprehension
        versions: tuple[Version, ...] = (
            _trusted_version_from_wire(versions_wire[0], obsolete_wire, obsolete),
        )
    else:
        versions = tuple(
            [_trusted_version_from_wire(item, obsolete_wire, obsolete) for item in versions_wire]
        )
    state = _trusted_state(obsolete, versions)
    _set_state_encoded_context(state, encoded_context)
    return state


def _trusted_version_from_wire(data: Any, obsolete_wire: Any, obsolete: VectorClock) -> Version:
    past, stamp_node = data[3], data[6]
    past_clock = obsolete if past == obsolete_wire else trusted_clock_from_flat(past)
    return _assembled_version(data, past_clock, data[1] if stamp_node is None else stamp_node)


def _assembled_version(data: Any, past: VectorClock, stamp_node: str) -> Version:
    """The version of valid wire fields `data`, given its past clock and its stamp's node
    (decoded by the caller). Every version of every record and message read comes through
    here, so the trusted constructors are unrolled: one call builds all three objects."""
    value, dot_node, counter, _, wall_ms, logical, _ = data
    dot: Dot = _new(Dot)
    _set_dot_node(dot, dot_node)
    _set_dot_counter(dot, counter)
    stamp: HlcStamp = _new(HlcStamp)
    _set_stamp_wall_ms(stamp, wall_ms)
    _set_stamp_logical(stamp, logical)
    _set_stamp_node(stamp, stamp_node)
    version: Version = _new(Version)
    _set_version_value(version, value)
    _set_version_dot(version, dot)
    _set_version_past(version, past)
    _set_version_stamp(version, stamp)
    return version


def state_from_wire(data: object) -> KeyState:
    """Inverse of `state_to_wire`, in canonical form; raises ValueError on malformed data.

    Peers and storage are untrusted: every field is checked, sizes are bounded.
    """
    if not isinstance(data, list | tuple) or len(data) != 2:
        raise _malformed("a key state is [obsolete clock, [version, ...]]")
    obsolete, versions = data
    if not isinstance(versions, list | tuple):
        raise _malformed("a key state's versions are a list")
    if len(versions) > MAX_WIRE_VERSIONS:
        raise _malformed(f"a key state has at most {MAX_WIRE_VERSIONS} versions")
    obsolete_clock = _clock_from_wire(obsolete)
    return _canonical_state(
        obsolete_clock,
        [_version_from_wire(item, obsolete, obsolete_clock) for item in versions],
    )


def check_state_bounds(state: KeyState, max_wall_ms: int) -> None:
    """Raise ValueError unless `state` is one honest replicas could have made with clocks
    that read at most `max_wall_ms`: no stamp later than that, none counting more than
    MAX_STAMP_LOGICAL within its millisecond, no counter above `counter_ceiling`.

    `state_from_wire` checks the format (any uint64); this checks the values, against a
    receiver's clock: a stamp or a counter near 2**64 would leave the key no room for
    another write, and a stamp from the future would carry the receiver's clock there.
    """
    versions, obsolete = state.versions, state.obsolete
    # Versions are sorted newest stamp first: the first has the latest wall time.
    if versions and versions[0].stamp.wall_ms > max_wall_ms:
        ahead = versions[0].stamp.wall_ms - max_wall_ms
        raise _malformed(f"a stamp is {ahead} ms further ahead than this node's clock allows")
    ceiling = counter_ceiling(max_wall_ms)
    too_high = first_counter_above(obsolete, ceiling)
    for version in versions:
        if too_high is not None:
            break
        if version.stamp.logical > MAX_STAMP_LOGICAL:
            raise _malformed(f"a stamp's logical part is above {MAX_STAMP_LOGICAL}")
        dot = version.dot
        if dot.counter > ceiling:
            too_high = dot.node, dot.counter
        elif version.past is not obsolete:
            too_high = first_counter_above(version.past, ceiling)
    if too_high is not None:
        raise _malformed(
            f"a counter is {too_high[1]}, above {ceiling}, the highest a clock this node "
            "allows could have made"
        )
