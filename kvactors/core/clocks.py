"""Clocks: vector clocks, hybrid logical clocks (HLC) and dots, the parts a key's versions
are made of (kvactors.core.versions).

- `VectorClock`: what a replica or a client has seen, as counters per node.
- `HlcStamp`, `hlc_tick`, `hlc_observe`, `Hlc`: a node's hybrid logical clock, whose
  stamps order versions (the newest is the one a reader sees).
- `Dot`: one write event, the coordinating replica and its counter for the key.

Pure logic: no I/O, no clock reads (physical time comes in as an argument).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "COUNTER_MARGIN",
    "MAX_COUNTER",
    "MAX_STAMP_LOGICAL",
    "Dot",
    "Hlc",
    "HlcStamp",
    "VectorClock",
    "counter_ceiling",
    "dot_floor",
    "first_counter_above",
    "hlc_observe",
    "hlc_tick",
]

# Counters travel as unsigned 64-bit integers (msgpack uint64, context varints).
MAX_COUNTER = 2**64 - 1

# The most a stamp from outside may count within one millisecond. A node's own clock
# counts one per event while its physical clock stands still or runs behind: 2**48 is
# more events than any replica makes, and leaves 2**64 - 2**48 increments before a
# counter would outgrow its 64 bits.
MAX_STAMP_LOGICAL = 2**48 - 1

# How far a replica's own counters for one key may run ahead of its dot floor: one per
# write beyond 1,024 writes of the key within one millisecond of its clock. 2**32 is
# far more than that, and a counter this far ahead still leaves room for 2**63 writes.
COUNTER_MARGIN = 2**32
_FLOOR_LOGICAL_BITS = 10
_FLOOR_LOGICAL_MAX = (1 << _FLOOR_LOGICAL_BITS) - 1


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
        return _trusted_stamp(physical_ms, 0, last.node)
    return _trusted_stamp(last.wall_ms, last.logical + 1, last.node)


def hlc_observe(last: HlcStamp, remote: HlcStamp, physical_ms: int) -> HlcStamp:
    """The stamp after receiving `remote`: strictly greater than both `last` and `remote`."""
    wall_ms = max(last.wall_ms, remote.wall_ms, physical_ms)
    # The logical part only counts events within the same wall millisecond.
    logical = -1
    if wall_ms == last.wall_ms:
        logical = max(logical, last.logical)
    if wall_ms == remote.wall_ms:
        logical = max(logical, remote.logical)
    return _trusted_stamp(wall_ms, logical + 1, last.node)


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
        """`hlc_tick` of the last stamp, which it becomes (every write takes one: inlined)."""
        last = self._last
        stamp: HlcStamp = _new(HlcStamp)
        if physical_ms > last.wall_ms:
            _set_stamp_wall_ms(stamp, physical_ms)
            _set_stamp_logical(stamp, 0)
        else:
            _set_stamp_wall_ms(stamp, last.wall_ms)
            _set_stamp_logical(stamp, last.logical + 1)
        _set_stamp_node(stamp, last.node)
        self._last = stamp
        return stamp

    def observe(self, remote: HlcStamp, physical_ms: int) -> HlcStamp:
        self._last = hlc_observe(self._last, remote, physical_ms)
        return self._last


# ------------------------------------------------------------------------- dotted versions


@dataclass(frozen=True, slots=True, order=True)
class Dot:
    """One write event: the coordinating replica `node` and its `counter` for this key.

    A replica numbers the writes it coordinates for one key 1, 2, 3, ... (see
    `kvactors.core.versions.coordinate_write`), so a dot names exactly one write,
    cluster-wide, as long as the replica does not forget the key (see `min_counter`
    there about purged tombstones).
    """

    node: str
    counter: int

    def __post_init__(self) -> None:
        if not isinstance(self.node, str) or not self.node:
            raise ValueError("a dot's node is a non-empty str")
        if not _is_int(self.counter) or not 1 <= self.counter <= MAX_COUNTER:
            raise ValueError(f"a dot's counter is out of range: {self.counter!r}")

    def covered_by(self, clock: VectorClock) -> bool:
        """True when `clock` has seen this write."""
        return clock.counter(self.node) >= self.counter


def dot_floor(stamp: HlcStamp) -> int:
    """The least counter for a dot made at `stamp`: never below the clock's reading, so a
    key forgotten after its tombstones were purged (or lost with a memory node) does not
    reuse a dot that a lagging replica still counts as superseded (Riak's kv679).

    Ten bits for the logical part; past 1023 stamps in one millisecond the floor stops
    rising, and the key's own counters keep its dots apart (`coordinate_write` takes the
    greater of the two)."""
    logical = stamp.logical
    # A conditional expression, not min(): every write asks, and a call costs more.
    return (stamp.wall_ms << _FLOOR_LOGICAL_BITS) + (
        logical if logical < _FLOOR_LOGICAL_MAX else _FLOOR_LOGICAL_MAX
    )


def counter_ceiling(max_wall_ms: int) -> int:
    """The highest counter an honest replica whose clock reads at most `max_wall_ms` can
    have put in a dot: its dot floor then, plus `COUNTER_MARGIN`.

    Counters are clock readings (`dot_floor`), so a counter above the ceiling came from
    a clock further ahead than allowed, or from no clock at all: a counter near 2**64
    would leave its key no room for another write."""
    wall_ms = max_wall_ms if max_wall_ms > 0 else 0  # a test, not max(): every write asks
    return (wall_ms << _FLOOR_LOGICAL_BITS) + _FLOOR_LOGICAL_MAX + COUNTER_MARGIN


def first_counter_above(clock: VectorClock, ceiling: int) -> tuple[str, int] | None:
    """The first entry of `clock` whose counter is above `ceiling`; None when none is."""
    for node, counter in clock.entries:
        if counter > ceiling:
            return node, counter
    return None


# A trusted constructor: builds a stamp through its slot descriptors, skipping __init__
# and __post_init__, for the stamps `hlc_tick` and `hlc_observe` compute from valid ones.
_new = object.__new__
_set_stamp_wall_ms = HlcStamp.__dict__["wall_ms"].__set__
_set_stamp_logical = HlcStamp.__dict__["logical"].__set__
_set_stamp_node = HlcStamp.__dict__["node"].__set__


def _trusted_stamp(wall_ms: int, logical: int, node: str) -> HlcStamp:
    stamp: HlcStamp = _new(HlcStamp)
    _set_stamp_wall_ms(stamp, wall_ms)
    _set_stamp_logical(stamp, logical)
    _set_stamp_node(stamp, node)
    return stamp
