"""Versions of a stored value: vector clocks, hybrid logical clocks and sibling sets.

Every stored value carries a `VectorClock` (which writes it has seen, for causality) and an
`HlcStamp` (when it was written, for picking one winner among concurrent siblings). A replica
keeps, per key, the set of versions that no other version supersedes (`Siblings`):

- `apply_write` adds one version to a replica's set, `reconcile` merges the sets of two
  replicas; both keep exactly the versions that nothing else supersedes.
- `new_write` / `new_delete` build the version a coordinator writes from a client's causal
  context, `causal_context` is the context a `get` hands back, `winner` the sibling a reader sees.
- Deletes are tombstones; `purge_tombstones` forgets them after a grace period.
- `encode_context` / `decode_context` turn a clock into the opaque bytes clients carry, and
  the `to_wire` / `from_wire` pairs turn clocks, stamps and versions into builtin types for
  node-to-node messages and storage.

Pure logic: no I/O, no clock reads (physical time comes in as an argument), no msgpack.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "CONTEXT_FORMAT",
    "MAX_CONTEXT_BYTES",
    "MAX_CONTEXT_ENTRIES",
    "MAX_COUNTER",
    "MAX_NODE_NAME_BYTES",
    "Hlc",
    "HlcStamp",
    "Siblings",
    "VectorClock",
    "Version",
    "apply_write",
    "causal_context",
    "decode_context",
    "encode_context",
    "hlc_observe",
    "hlc_tick",
    "new_delete",
    "new_write",
    "purge_tombstones",
    "reconcile",
    "siblings_from_wire",
    "siblings_to_wire",
    "supersedes",
    "winner",
]

# Counters travel as unsigned 64-bit integers (msgpack uint64, context varints).
MAX_COUNTER = 2**64 - 1


# --------------------------------------------------------------------------- vector clocks


@dataclass(frozen=True, slots=True)
class VectorClock:
    """An immutable vector clock: `(node, counter)` pairs sorted by node, counters >= 1.

    A node missing from `entries` has counter 0. Because the form is canonical (sorted, no
    zero counters), two clocks are equal exactly when their dataclass fields are equal.
    """

    entries: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        previous = ""
        for index, (node, counter) in enumerate(self.entries):
            if not node:
                raise ValueError("vector clock node names must be non-empty")
            if index and node <= previous:
                raise ValueError("vector clock entries must be sorted by node, without duplicates")
            if not 1 <= counter <= MAX_COUNTER:
                raise ValueError(f"vector clock counter out of range: {counter!r}")
            previous = node

    @classmethod
    def from_dict(cls, counters: Mapping[str, int]) -> VectorClock:
        """Build a clock from `{node: counter}`; zero counters are dropped."""
        return cls(tuple(sorted((node, n) for node, n in counters.items() if n != 0)))

    def as_dict(self) -> dict[str, int]:
        return dict(self.entries)

    def counter(self, node: str) -> int:
        for entry_node, count in self.entries:
            if entry_node == node:
                return count
        return 0

    def increment(self, node: str) -> VectorClock:
        """This clock with `node`'s counter one higher."""
        counters = self.as_dict()
        counters[node] = counters.get(node, 0) + 1
        return VectorClock.from_dict(counters)

    def merge(self, other: VectorClock) -> VectorClock:
        """The least clock that descends both: the entry-wise maximum."""
        counters = self.as_dict()
        for node, count in other.entries:
            if count > counters.get(node, 0):
                counters[node] = count
        return VectorClock.from_dict(counters)

    def descends(self, other: VectorClock) -> bool:
        """True when this clock has seen everything `other` has (self >= other, entry-wise)."""
        mine = self.as_dict()
        return all(mine.get(node, 0) >= count for node, count in other.entries)

    def dominates(self, other: VectorClock) -> bool:
        """Strictly descends: has seen everything `other` has, and more."""
        return self != other and self.descends(other)

    def concurrent(self, other: VectorClock) -> bool:
        """Neither clock descends the other: two writes that did not see each other."""
        return not self.descends(other) and not other.descends(self)

    def to_wire(self) -> dict[str, int]:
        return self.as_dict()

    @classmethod
    def from_wire(cls, data: object) -> VectorClock:
        """Inverse of `to_wire`; raises ValueError on anything that is not a valid clock."""
        if not isinstance(data, Mapping):
            raise ValueError("a vector clock must be a map of node to counter")
        counters: dict[str, int] = {}
        for node, count in data.items():
            if not isinstance(node, str) or not _is_int(count) or count < 1:
                raise ValueError("a vector clock maps non-empty str nodes to counters >= 1")
            counters[node] = count
        return cls.from_dict(counters)


def _is_int(value: object) -> bool:
    # bool is an int subclass; a True counter or timestamp is a malformed message.
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------- hybrid logical clock


@dataclass(frozen=True, slots=True, order=True)
class HlcStamp:
    """A hybrid logical clock reading; totally ordered by (wall_ms, logical, node)."""

    wall_ms: int
    logical: int
    node: str

    def __post_init__(self) -> None:
        if self.wall_ms < 0 or self.logical < 0:
            raise ValueError("HLC wall_ms and logical must be >= 0")

    def to_wire(self) -> list[int | str]:
        return [self.wall_ms, self.logical, self.node]

    @classmethod
    def from_wire(cls, data: object) -> HlcStamp:
        """Inverse of `to_wire`; raises ValueError on anything that is not a valid stamp."""
        if not isinstance(data, list | tuple) or len(data) != 3:
            raise ValueError("an HLC stamp is [wall_ms, logical, node]")
        wall_ms, logical, node = data
        if not _is_int(wall_ms) or not _is_int(logical) or not isinstance(node, str):
            raise ValueError("an HLC stamp is [int wall_ms, int logical, str node]")
        return cls(wall_ms, logical, node)


def hlc_tick(last: HlcStamp, physical_ms: int) -> HlcStamp:
    """The stamp for a local event after `last`: strictly greater than `last`, and its wall
    part never behind `physical_ms`, even when the physical clock steps backwards."""
    if physical_ms > last.wall_ms:
        return HlcStamp(physical_ms, 0, last.node)
    return HlcStamp(last.wall_ms, last.logical + 1, last.node)


def hlc_observe(last: HlcStamp, remote: HlcStamp, physical_ms: int) -> HlcStamp:
    """The stamp after receiving `remote`: strictly greater than both `last` and `remote`."""
    wall_ms = max(last.wall_ms, remote.wall_ms, physical_ms)
    # The logical part only counts events within the same wall millisecond.
    logical = -1
    if wall_ms == last.wall_ms:
        logical = max(logical, last.logical)
    if wall_ms == remote.wall_ms:
        logical = max(logical, remote.logical)
    return HlcStamp(wall_ms, logical + 1, last.node)


class Hlc:
    """One node's hybrid logical clock: remembers the last stamp it issued.

    Restore it after a restart with the highest stamp the node has stored, so it never
    issues a stamp below one it issued before.
    """

    __slots__ = ("_last",)

    def __init__(self, node: str, last: HlcStamp | None = None) -> None:
        if last is not None and last.node != node:
            raise ValueError("the restored HLC stamp belongs to another node")
        self._last = last if last is not None else HlcStamp(0, 0, node)

    @property
    def last(self) -> HlcStamp:
        return self._last

    def now(self, physical_ms: int) -> HlcStamp:
        self._last = hlc_tick(self._last, physical_ms)
        return self._last

    def observe(self, remote: HlcStamp, physical_ms: int) -> HlcStamp:
        self._last = hlc_observe(self._last, remote, physical_ms)
        return self._last


# ----------------------------------------------------------------------------- versions


@dataclass(frozen=True, slots=True)
class Version:
    """One written value (or tombstone) with its causal clock and its HLC stamp.

    `value` is the already-encoded value; a tombstone has no value. `deleted_at_ms` is the
    tombstone's deletion time for the purge grace period (the stamp's wall time if absent).
    """

    value: bytes | None
    clock: VectorClock
    stamp: HlcStamp
    tombstone: bool = False
    deleted_at_ms: int | None = None

    def __post_init__(self) -> None:
        if self.tombstone != (self.value is None):
            raise ValueError("a tombstone has no value and a live version has one")
        if self.deleted_at_ms is not None and (not self.tombstone or self.deleted_at_ms < 0):
            raise ValueError("deleted_at_ms belongs to tombstones and is >= 0")

    @property
    def deletion_time_ms(self) -> int:
        """When a tombstone's grace period started."""
        return self.stamp.wall_ms if self.deleted_at_ms is None else self.deleted_at_ms

    def to_wire(self) -> list[object]:
        """`[value, clock, stamp, tombstone, deleted_at_ms]` in builtin types."""
        return [
            self.value,
            self.clock.to_wire(),
            self.stamp.to_wire(),
            self.tombstone,
            self.deleted_at_ms,
        ]

    @classmethod
    def from_wire(cls, data: object) -> Version:
        """Inverse of `to_wire`; raises ValueError on anything that is not a valid version."""
        if not isinstance(data, list | tuple) or len(data) != 5:
            raise ValueError("a version is [value, clock, stamp, tombstone, deleted_at_ms]")
        value, clock, stamp, tombstone, deleted_at_ms = data
        if value is not None and not isinstance(value, bytes):
            raise ValueError("a version's value is bytes or None")
        if not isinstance(tombstone, bool):
            raise ValueError("a version's tombstone flag is a bool")
        if deleted_at_ms is not None and not _is_int(deleted_at_ms):
            raise ValueError("a version's deleted_at_ms is an int or None")
        return cls(
            value,
            VectorClock.from_wire(clock),
            HlcStamp.from_wire(stamp),
            tombstone,
            deleted_at_ms,
        )


# A replica's versions of one key: none supersedes another, newest stamp first.
Siblings: TypeAlias = tuple[Version, ...]


_VersionKey: TypeAlias = tuple[HlcStamp, tuple[tuple[str, int], ...], bool, bytes, int]


def _total_key(version: Version) -> _VersionKey:
    # Distinct versions have distinct keys, so sorting by it is deterministic on every replica.
    return (
        version.stamp,
        version.clock.entries,
        version.tombstone,
        version.value or b"",
        -1 if version.deleted_at_ms is None else version.deleted_at_ms,
    )


def supersedes(newer: Version, older: Version) -> bool:
    """True when `newer` makes `older` obsolete.

    That is when `newer`'s clock dominates `older`'s. Two different versions with the same
    clock should not exist (one clock entry names one write), but a node that lost its
    counters can produce them; then the one with the higher stamp wins, so every replica
    keeps the same one.
    """
    if newer.clock == older.clock:
        return _total_key(newer) > _total_key(older)
    return newer.clock.descends(older.clock)


def reconcile(first: Iterable[Version], second: Iterable[Version] = ()) -> Siblings:
    """Merge two sibling sets: exactly the versions that no other version supersedes.

    Commutative, associative and idempotent; the result is sorted newest stamp first, so
    equal inputs give equal tuples on every replica.
    """
    unique: dict[_VersionKey, Version] = {}
    for version in (*first, *second):
        unique[_total_key(version)] = version
    pool = [unique[key] for key in sorted(unique, reverse=True)]
    return tuple(
        candidate
        for candidate in pool
        if not any(supersedes(other, candidate) for other in pool if other is not candidate)
    )


def apply_write(existing: Siblings, new: Version) -> Siblings:
    """A replica's siblings after storing `new`.

    Versions `new` supersedes are replaced, concurrent ones are kept beside it, a duplicate
    is stored once, and a `new` that an existing version supersedes changes nothing.
    """
    return reconcile(existing, (new,))


def winner(siblings: Iterable[Version]) -> Version | None:
    """The sibling a reader sees: the highest HLC stamp (may be a tombstone); None if empty."""
    return max(siblings, key=_total_key, default=None)


def causal_context(siblings: Iterable[Version]) -> VectorClock:
    """The clock a `get` hands back: a write with it supersedes every sibling read."""
    context = VectorClock()
    for version in siblings:
        context = context.merge(version.clock)
    return context


def _coordinator_clock(
    context: VectorClock, node: str, local_siblings: Iterable[Version]
) -> VectorClock:
    # The coordinator's own entry must go past every counter it issued before, or a client
    # with an old context would make a second, different write with an already used clock.
    highest = max(
        (version.clock.counter(node) for version in local_siblings),
        default=0,
    )
    counters = context.as_dict()
    counters[node] = max(counters.get(node, 0), highest) + 1
    return VectorClock.from_dict(counters)


def new_write(
    context: VectorClock,
    node: str,
    stamp: HlcStamp,
    value: bytes,
    *,
    local_siblings: Iterable[Version] = (),
) -> Version:
    """The version coordinator `node` writes for a client `put` with causal `context`.

    Its clock is the context with the coordinator's entry incremented (classic Dynamo). Pass
    the coordinator's stored siblings as `local_siblings` so the entry also passes the
    counters it issued before: the new clock is then always a fresh one. The price of
    per-node clocks: a write without the full context supersedes earlier writes that the
    same coordinator made alone (other nodes' concurrent writes stay siblings).
    """
    return Version(value, _coordinator_clock(context, node, local_siblings), stamp)


def new_delete(
    context: VectorClock,
    node: str,
    stamp: HlcStamp,
    *,
    local_siblings: Iterable[Version] = (),
) -> Version:
    """The tombstone coordinator `node` writes for a client `delete`; see `new_write`."""
    clock = _coordinator_clock(context, node, local_siblings)
    return Version(None, clock, stamp, tombstone=True, deleted_at_ms=stamp.wall_ms)


def purge_tombstones(siblings: Siblings, now_ms: int, grace_ms: int) -> Siblings:
    """Forget a deleted key once only tombstones remain and all are `grace_ms` old or more.

    A tombstone beside a live sibling is a concurrent delete and stays; a young tombstone
    stays so replicas that missed the delete learn it instead of resurrecting the value.
    """
    if siblings and all(
        version.tombstone and now_ms - version.deletion_time_ms >= grace_ms for version in siblings
    ):
        return ()
    return siblings


def siblings_to_wire(siblings: Iterable[Version]) -> list[list[object]]:
    return [version.to_wire() for version in siblings]


def siblings_from_wire(data: object) -> Siblings:
    """Inverse of `siblings_to_wire`, reconciled; raises ValueError on malformed data."""
    if not isinstance(data, list | tuple):
        raise ValueError("a sibling set is a list of versions")
    return reconcile(Version.from_wire(item) for item in data)


# ------------------------------------------------------------------------- client context
#
# Layout of an encoded context (all integers are unsigned LEB128 varints, minimal length):
#
#     format byte (CONTEXT_FORMAT = 1)
#     entry count                          at most MAX_CONTEXT_ENTRIES
#     per entry, names strictly ascending (by UTF-8 bytes, the same as by str):
#         name length                      1 .. MAX_NODE_NAME_BYTES
#         name                             UTF-8
#         counter                          1 .. MAX_COUNTER
#
# The encoding is canonical: one clock has exactly one encoding, and decoding rejects any
# other byte string (trailing bytes, padded varints, unsorted names), so a context that
# decodes also re-encodes to the same bytes.

CONTEXT_FORMAT = 1
MAX_CONTEXT_ENTRIES = 256
MAX_NODE_NAME_BYTES = 255
_MAX_VARINT_BYTES = 10  # enough for MAX_COUNTER
MAX_CONTEXT_BYTES = 1 + 2 + MAX_CONTEXT_ENTRIES * (2 + MAX_NODE_NAME_BYTES + _MAX_VARINT_BYTES)


def _append_varint(out: bytearray, number: int) -> None:
    while True:
        low_bits = number & 0x7F
        number >>= 7
        if number:
            out.append(low_bits | 0x80)
        else:
            out.append(low_bits)
            return


def encode_context(clock: VectorClock) -> bytes:
    """The opaque bytes a client carries from a `get` to its next `put` or `delete`."""
    if len(clock.entries) > MAX_CONTEXT_ENTRIES:
        raise ValueError(f"a context holds at most {MAX_CONTEXT_ENTRIES} entries")
    out = bytearray((CONTEXT_FORMAT,))
    _append_varint(out, len(clock.entries))
    for node, counter in clock.entries:
        name = node.encode("utf-8")
        if len(name) > MAX_NODE_NAME_BYTES:
            raise ValueError(f"node names in a context are at most {MAX_NODE_NAME_BYTES} bytes")
        _append_varint(out, len(name))
        out += name
        _append_varint(out, counter)
    return bytes(out)


class _ContextReader:
    """A cursor over untrusted context bytes; every read checks bounds."""

    __slots__ = ("_data", "_position")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def at_end(self) -> bool:
        return self._position == len(self._data)

    def take(self, count: int) -> bytes:
        end = self._position + count
        if end > len(self._data):
            raise ValueError("context is truncated")
        chunk = self._data[self._position : end]
        self._position = end
        return chunk

    def varint(self) -> int:
        number = 0
        for index in range(_MAX_VARINT_BYTES):
            byte = self.take(1)[0]
            number |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                if byte == 0 and index > 0:
                    raise ValueError("context varint is not minimal")
                if number > MAX_COUNTER:
                    raise ValueError("context varint is out of range")
                return number
        raise ValueError("context varint is too long")


def decode_context(data: object) -> VectorClock:
    """The clock inside a context a client sent; raises ValueError unless it is exactly what
    `encode_context` produces for some clock, within the size limits."""
    if not isinstance(data, bytes | bytearray):
        raise ValueError("a context must be bytes")
    if len(data) > MAX_CONTEXT_BYTES:
        raise ValueError("context is too large")
    reader = _ContextReader(bytes(data))
    if reader.take(1)[0] != CONTEXT_FORMAT:
        raise ValueError("unknown context format")
    count = reader.varint()
    if count > MAX_CONTEXT_ENTRIES:
        raise ValueError("context has too many entries")
    entries: list[tuple[str, int]] = []
    for _ in range(count):
        name_length = reader.varint()
        if not 1 <= name_length <= MAX_NODE_NAME_BYTES:
            raise ValueError("context node name has a bad length")
        try:
            node = reader.take(name_length).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError("context node name is not UTF-8") from error
        counter = reader.varint()
        if counter == 0:
            raise ValueError("context counter is zero")
        if entries and node <= entries[-1][0]:
            raise ValueError("context entries are not sorted")
        entries.append((node, counter))
    if not reader.at_end():
        raise ValueError("context has trailing bytes")
    return VectorClock(tuple(entries))
