"""The member table: what one node believes about every member of its cluster.

A `Member` is one record: name, endpoint (where peers reach it), status, incarnation,
heartbeat and client endpoint (where clients reach it; empty when not known). Nodes exchange
their tables by gossip and merge what they receive with `MemberTable.merge`; the merge is
commutative, associative and idempotent, so every node that has seen the same records holds
the same table, whatever order they arrived in.

The merge rule, record by record:

- the higher incarnation wins. Only the member itself raises its incarnation (to refute an
  accusation, to announce that it is leaving, or after a restart), so a newer incarnation is
  always newer news about that member;
- at equal incarnation the stronger status wins, in the order JOINING < ALIVE < LEAVING <
  SUSPECT < DEAD < LEFT: an accusation overrides the claim it accuses, and a member that has
  left stays left;
- the endpoint breaks what ties remain, so that the order is total and two nodes never keep
  different records of the same member;
- the heartbeat is the highest either side has seen, whichever record wins;
- REMOVED, the strongest status, is a tombstone: `MemberTable.remove` turns a DEAD or LEFT
  record into one at the same incarnation, so every older record of that member (stale
  gossip) loses to it. A record at a higher incarnation still wins: only the member itself
  raises its incarnation, so a removed member that runs again (it was not dead after all,
  or was started again on its data) is a member again, as after any restart. A member
  that must stay out is kept out by not starting it again, and in a secure cluster by
  revoking its key.

The client endpoint travels with the record but takes no part in the order: a member
announces it with each incarnation. A member that sees its own record at its incarnation
with another client endpoint refutes it (kvactors.core.gossip).

A heartbeat that only moved on is not a membership change (`is_membership_change`), but the
failure detector needs to hear of it: `MemberTable.merge_tracking` reports those advances.

Bounds and plausibility. Gossip relays records from anyone who can reach a node, so the
merge takes only what an honest member could have sent:

- names and endpoints are printable text (`str.isprintable`: no control characters, no
  line breaks), names at most `MAX_NAME_LENGTH` (255) UTF-8 bytes and endpoints at most
  `MAX_ENDPOINT_LENGTH`; a record that breaks this is malformed, and `from_wire` refuses it;
- a table holds at most `MAX_MEMBERS` records, tombstones included. A new name past that
  takes the place of a tombstone (the first in table order) when there is one, and is
  ignored otherwise (`MergeResult.ignored` counts it); a tombstone of a name the table
  does not hold is not worth a place in a full table;
- a record whose incarnation is more than `MAX_INCARNATION_STEP` above the incarnation
  the table holds for that member (above `INCARNATION_LIMIT`, half the counter's range,
  for a member it does not hold), or whose heartbeat is above `HEARTBEAT_LIMIT`, is
  refused (`MergeResult.refused` counts it). A member raises its incarnation by one at a
  time (a refutation, a leave, a restart), so an honest record is never that far ahead;
  an accusation that is (a member "left" at incarnation 2**63 - 1) would win every merge
  for good, since the accused could never outrank it. An accusation within the step is
  taken, and the accused outranks it by one (kvactors.core.gossip): the counter's range
  leaves room for more than 2**42 such accusations, each of which takes a message.

Without signatures this bounds what a forger can do, but does not stop it: a node that
has not heard of a member yet takes the first record of it that it is told, up to
`INCARNATION_LIMIT`. The merge rule holds (commutative, associative, idempotent) for
tables within these bounds.

Signatures. In a secure cluster a record also carries a `signature`
(kvactors.core.member_signatures says who signs what and how a receiver checks it): a
`ClaimSignature`, the member's own signature of its claim (name, endpoints, incarnation
and the status it announced), or, on a tombstone, a `RemovalSignature` by the node that
removed it. The merge order grows two rules, which leave it as it was for unsigned
tables:

- a signed record outranks an unsigned one, whatever their incarnations: in a secure
  cluster every record that travels is signed, and an unsigned one is a node's own guess
  (the members it remembered from its data), which the first signed news replaces;
- between two signed records of equal precedence, the signature breaks the tie (a
  removal's above a claim's; among claims, the stronger announced status, then the
  signature's bytes), so that the order stays total.

Pure logic: no I/O, no clock, no randomness. `to_wire` / `from_wire` turn records into lists
of builtin types for the node-to-node codec, and `from_wire` refuses anything malformed.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeAlias

__all__ = [
    "HEARTBEAT_LIMIT",
    "INCARNATION_LIMIT",
    "MAX_COUNTER",
    "MAX_ENDPOINT_LENGTH",
    "MAX_INCARNATION_STEP",
    "MAX_MEMBERS",
    "MAX_NAME_LENGTH",
    "MAX_SIGNATURE_LENGTH",
    "ClaimSignature",
    "HandedOver",
    "Joined",
    "Leave",
    "Member",
    "MemberChange",
    "MemberStatus",
    "MemberTable",
    "MembersChanged",
    "MergeResult",
    "RecordSignature",
    "RemovalSignature",
    "Remove",
    "RemoveOutcome",
    "RemoveResult",
    "is_membership_change",
    "outranks",
    "printable",
    "wire_counter",
    "wire_text",
]

MAX_NAME_LENGTH = 255
"""Longest member name, in UTF-8 bytes: the same limit as node names in causal contexts."""

MAX_ENDPOINT_LENGTH = 1024
"""Longest endpoint, in UTF-8 bytes. Far above any real `tcp://host:port`."""

MAX_COUNTER = 2**63 - 1
"""Incarnations and heartbeats fit a signed 64-bit integer, which every msgpack reader takes."""

MAX_MEMBERS = 1024
"""Most records a member table holds, tombstones included (see the module docstring)."""

INCARNATION_LIMIT = MAX_COUNTER // 2
"""Highest incarnation taken from gossip for a member the table does not hold yet, so that
the member has the upper half of the range to refute in."""

MAX_INCARNATION_STEP = 2**20
"""Furthest a record's incarnation may be ahead of the one held for its member. A member
raises its own by one per refutation, leave or restart, so a million is far above what
an honest member reaches while another node is not listening."""

HEARTBEAT_LIMIT = MAX_COUNTER // 2
"""Highest heartbeat taken from gossip, so that a forged one leaves the member room to
beat on (a heartbeat that can no longer advance looks like silence)."""

MAX_SIGNATURE_LENGTH = 128
"""Longest signature a record carries, in bytes (an Ed25519 signature has 64)."""


class MemberStatus(Enum):
    """What a node believes about a member. The order of definition is the merge order."""

    JOINING = "joining"
    ALIVE = "alive"
    LEAVING = "leaving"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"
    REMOVED = "removed"
    """A tombstone: the member was taken out of the cluster (`MemberTable.remove`)."""

    @property
    def rank(self) -> int:
        """Strength at equal incarnation: the higher rank wins a merge."""
        return _RANKS[self]

    @property
    def is_reachable(self) -> bool:
        """Worth talking to: running, as far as we know. A suspect may only be slow."""
        return self in _REACHABLE

    @property
    def is_watched(self) -> bool:
        """Worth a failure detector's attention: not DEAD, LEFT or REMOVED already."""
        return self not in _UNWATCHED


_RANKS = {status: rank for rank, status in enumerate(MemberStatus)}
_REACHABLE = frozenset(
    {MemberStatus.JOINING, MemberStatus.ALIVE, MemberStatus.LEAVING, MemberStatus.SUSPECT}
)
_REMOVED = MemberStatus.REMOVED
_UNWATCHED = frozenset({MemberStatus.DEAD, MemberStatus.LEFT, MemberStatus.REMOVED})
_REMOVABLE = frozenset({MemberStatus.DEAD, MemberStatus.LEFT})
_STATUS_BY_WIRE = {status.value: status for status in MemberStatus}
_ANNOUNCED_BY_WIRE = {
    status.value: status
    for status in (
        MemberStatus.JOINING,
        MemberStatus.ALIVE,
        MemberStatus.LEAVING,
        MemberStatus.LEFT,
    )
}


@dataclass(frozen=True, slots=True)
class ClaimSignature:
    """A member's signature of its own claim: its name, endpoint, client endpoint and
    incarnation, with `announced`, the status it announced (JOINING, ALIVE, LEAVING or
    LEFT). An accusation (SUSPECT, DEAD) keeps the accused's signature of the claim it
    accuses, so a record always shows a claim its member made."""

    announced: MemberStatus
    signature: bytes

    def order(self) -> tuple[int, int, str, bytes]:
        """Where this signature stands in a tie between records (see the module doc)."""
        return (1, self.announced.rank, "", self.signature)

    def to_wire(self) -> list[str | bytes]:
        return [self.announced.value, self.signature]


@dataclass(frozen=True, slots=True)
class RemovalSignature:
    """On a tombstone (REMOVED): the signature, by node `remover`, of the removal: the
    member's name, endpoint, client endpoint and incarnation it took out."""

    remover: str
    signature: bytes

    def order(self) -> tuple[int, int, str, bytes]:
        """Where this signature stands in a tie between records (see the module doc)."""
        return (2, 0, self.remover, self.signature)

    def to_wire(self) -> list[str | bytes]:
        return [MemberStatus.REMOVED.value, self.remover, self.signature]


RecordSignature: TypeAlias = ClaimSignature | RemovalSignature
"""What a signed record carries (kvactors.core.member_signatures)."""

_UNSIGNED_ORDER = (0, 0, "", b"")


@dataclass(frozen=True, slots=True)
class Member:
    """One member's record. Immutable: every update builds a new record."""

    name: str
    endpoint: str
    status: MemberStatus
    incarnation: int
    heartbeat: int
    client_endpoint: str = ""
    """Where clients reach this member; `endpoint` is where its peers do. Empty when not
    known. It travels with the record but takes no part in the merge order: a member
    announces it with every incarnation, and nobody else changes it."""
    signature: RecordSignature | None = None
    """In a secure cluster, what shows that the member made this claim (or a trusted
    node removed it); None in an insecure one. Takes part in the merge order only
    between signed and unsigned records and to break ties (see the module doc)."""
    precedence: tuple[int, int, str] = field(init=False, repr=False, compare=False)
    """(incarnation, status rank, endpoint): the record with the higher precedence wins a
    merge. Derived once here, because merging compares it for every record of every table."""

    def __post_init__(self) -> None:
        _check_text(self.name, "member name", MAX_NAME_LENGTH)
        _check_text(self.endpoint, "member endpoint", MAX_ENDPOINT_LENGTH)
        if self.client_endpoint:
            _check_text(self.client_endpoint, "member client endpoint", MAX_ENDPOINT_LENGTH)
        _check_counter(self.incarnation, "incarnation")
        _check_counter(self.heartbeat, "heartbeat")
        precedence = (self.incarnation, self.status.rank, self.endpoint)
        object.__setattr__(self, "precedence", precedence)

    def with_heartbeat(self, heartbeat: int) -> Member:
        """This record with another heartbeat; the precedence stays the same."""
        return dataclasses.replace(self, heartbeat=heartbeat)

    def merged_with(self, other: Member) -> Member:
        """The merge of two records of the same member (see the module docstring).

        Returns one of the two objects themselves when it already is the merge (`self` when
        both are), so a caller can tell with `is` that nothing changed.
        """
        if other.name != self.name:
            raise ValueError(f"cannot merge records of {self.name!r} and {other.name!r}")
        winner, loser = (other, self) if outranks(other, self) else (self, other)
        if winner.heartbeat >= loser.heartbeat:
            return winner
        if winner.precedence == loser.precedence and winner.signature == loser.signature:
            return loser  # the same claim with a newer heartbeat: the loser is the merge
        return winner.with_heartbeat(loser.heartbeat)

    @property
    def claim(self) -> tuple[str, str, str, int, MemberStatus]:
        """(name, endpoint, client endpoint, incarnation, status): what a member signs
        of its own record (everything but the heartbeat)."""
        return (self.name, self.endpoint, self.client_endpoint, self.incarnation, self.status)

    def to_wire(self) -> list[str | int | list[str | bytes]]:
        """`[name, endpoint, status, incarnation, heartbeat, client_endpoint, signature]`,
        builtin types only; without the signature when there is none, and then without
        the client endpoint when it is empty (the record as it was before). A claim's
        signature is `[announced status, signature]`, a removal's `["removed", remover,
        signature]`."""
        wire: list[str | int | list[str | bytes]] = [
            self.name, self.endpoint, self.status.value, self.incarnation, self.heartbeat,
        ]  # fmt: skip
        if self.client_endpoint or self.signature is not None:
            wire.append(self.client_endpoint)
        if self.signature is not None:
            wire.append(self.signature.to_wire())
        return wire

    @classmethod
    def from_wire(cls, data: object) -> Member:
        """Inverse of `to_wire`; raises ValueError on anything that is not a valid record.
        A record without a client endpoint has an empty one."""
        if not isinstance(data, list | tuple) or len(data) not in (5, 6, 7):
            raise ValueError(
                "a member is [name, endpoint, status, incarnation, heartbeat, "
                "client_endpoint, signature]"
            )
        name, endpoint, status, incarnation, heartbeat = data[:5]
        if not isinstance(status, str) or status not in _STATUS_BY_WIRE:
            raise ValueError(f"unknown member status: {status!r}")
        client_endpoint = ""
        if len(data) >= 6 and data[5] != "":
            client_endpoint = wire_text(data[5], "member client endpoint", MAX_ENDPOINT_LENGTH)
        return cls(
            wire_text(name, "member name", MAX_NAME_LENGTH),
            wire_text(endpoint, "member endpoint", MAX_ENDPOINT_LENGTH),
            _STATUS_BY_WIRE[status],
            wire_counter(incarnation, "incarnation"),
            wire_counter(heartbeat, "heartbeat"),
            client_endpoint,
            _signature_from_wire(data[6]) if len(data) == 7 else None,
        )


def _signature_from_wire(data: object) -> RecordSignature:
    """Inverse of `ClaimSignature.to_wire` and `RemovalSignature.to_wire`; ValueError on
    anything else."""
    if not isinstance(data, list | tuple) or len(data) not in (2, 3):
        raise ValueError(
            "a record's signature is [status, signature] or [removed, remover, signature]"
        )
    if len(data) == 2:
        announced = data[0]
        if not isinstance(announced, str) or announced not in _ANNOUNCED_BY_WIRE:
            raise ValueError("a claim's signature names the status a member announces")
        return ClaimSignature(_ANNOUNCED_BY_WIRE[announced], _wire_signature(data[1]))
    if data[0] != MemberStatus.REMOVED.value:
        raise ValueError("a removal's signature starts with 'removed'")
    remover = wire_text(data[1], "remover", MAX_NAME_LENGTH)
    return RemovalSignature(remover, _wire_signature(data[2]))


def _wire_signature(value: object) -> bytes:
    if not isinstance(value, bytes) or not 0 < len(value) <= MAX_SIGNATURE_LENGTH:
        raise ValueError(f"a signature is 1 to {MAX_SIGNATURE_LENGTH} bytes")
    return value


def _signature_order(record: Member) -> tuple[int, int, str, bytes]:
    signature = record.signature
    return _UNSIGNED_ORDER if signature is None else signature.order()


def outranks(record: Member, other: Member) -> bool:
    """True when `record` wins a merge against `other`, a record of the same member,
    heartbeats aside (see the module docstring for the order)."""
    if (record.signature is None) != (other.signature is None):
        return other.signature is None
    if record.precedence != other.precedence:
        return record.precedence > other.precedence
    return _signature_order(record) > _signature_order(other)


@dataclass(frozen=True, slots=True)
class MemberChange:
    """A member's record as it was (None: it was unknown) and as it is now."""

    before: Member | None
    after: Member

    @property
    def name(self) -> str:
        return self.after.name


def is_membership_change(before: Member | None, after: Member) -> bool:
    """True when `after` says something new about the member: it is new, or its status,
    incarnation or endpoint changed. A heartbeat moving on is routine and does not count."""
    return before is None or before.precedence != after.precedence


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What `MemberTable.merge_tracking` found, besides the merged table."""

    table: MemberTable
    changes: tuple[MemberChange, ...]
    """Membership changes (see `is_membership_change`), in the order the records came."""
    advanced: frozenset[str]
    """Members whose heartbeat or incarnation moved on, or who were unknown: the failure
    detector's evidence that they are running."""
    differing: tuple[Member, ...]
    """The merged records of the members the other side sent in an older or weaker form:
    what a reply must carry for the other side to catch up on what it sent."""
    refused: int = 0
    """Records refused as implausible: too far ahead (see the module docstring)."""
    ignored: int = 0
    """Records of new members left out because the table was full (`MAX_MEMBERS`)."""


class MemberTable(Mapping[str, Member]):
    """An immutable mapping of member name to record, in the order the members were learnt.

    Updates (`with_member`, `merge`) return a new table and leave this one as it was, so a
    table can be handed to other threads and actors without copying.
    """

    __slots__ = ("_members", "_records")

    def __init__(self, records: Iterable[Member] = ()) -> None:
        by_name: dict[str, Member] = {}
        for record in records:
            if record.name in by_name:
                raise ValueError(f"duplicate member in a table: {record.name!r}")
            by_name[record.name] = record
        self._records = by_name
        self._members: tuple[Member, ...] | None = None

    @classmethod
    def _of(cls, records: dict[str, Member]) -> MemberTable:
        """A table that takes over `records`, which nobody else may hold or change."""
        table = cls.__new__(cls)
        table._records = records
        table._members = None
        return table

    # ------------------------------------------------------------------ the Mapping protocol

    def __getitem__(self, name: str) -> Member:
        return self._records[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def get(self, name: str, default: Member | None = None) -> Member | None:  # type: ignore[override]
        return self._records.get(name, default)

    def keys(self) -> KeysView[str]:
        return self._records.keys()

    def values(self) -> ValuesView[Member]:
        return self._records.values()

    def items(self) -> ItemsView[str, Member]:
        return self._records.items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MemberTable):
            return self._records == other._records
        return NotImplemented

    # Like a dict: compared by content, so not hashable.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MemberTable({list(self._records.values())!r})"

    # ------------------------------------------------------------------ updates

    def members(self) -> tuple[Member, ...]:
        """Every record, in table order (computed once per table: gossip sends it often)."""
        if self._members is None:
            self._members = tuple(self._records.values())
        return self._members

    def with_member(self, record: Member) -> MemberTable:
        """This table with `record` in place of the member's current record, merge or not."""
        if self._records.get(record.name) is record:
            return self
        records = dict(self._records)
        records[record.name] = record
        return MemberTable._of(records)

    def merge(
        self, other: MemberTable | Iterable[Member]
    ) -> tuple[MemberTable, tuple[MemberChange, ...]]:
        """The merged table and the membership changes it made; this very table when the
        other side brought nothing new."""
        result = self.merge_tracking(other)
        return result.table, result.changes

    def merge_tracking(
        self, other: MemberTable | Iterable[Member], *, max_members: int = MAX_MEMBERS
    ) -> MergeResult:
        """Merge, and report what the failure detector and a gossip reply need to know.

        Implausible records are refused and new members past `max_members` ignored (see
        the module docstring); both are counted in the result."""
        incoming = other.members() if isinstance(other, MemberTable) else other
        merged = dict(self._records)
        replaced = False
        changes: list[MemberChange] = []
        advanced: list[str] = []
        differing: list[Member] = []
        refused = ignored = 0
        room = _Room(max_members)
        # The hot path of gossip (every node merges a whole table every round), so the rule
        # of `Member.merged_with` is inlined here and decided on `precedence` tuples.
        for theirs in incoming:
            name = theirs.name
            mine = merged.get(name)
            if mine is theirs:
                continue
            if theirs.heartbeat > HEARTBEAT_LIMIT or theirs.incarnation > (
                INCARNATION_LIMIT if mine is None else mine.incarnation + MAX_INCARNATION_STEP
            ):
                refused += 1
                continue
            if mine is None:
                if not room.admits(merged, theirs):
                    ignored += 1
                    continue
                merged[name] = theirs
                replaced = True
                changes.append(MemberChange(None, theirs))
                advanced.append(name)
                continue
            # Unsigned tables (and most records of signed ones, which carry the signature
            # held already) compare precedence alone; else see `outranks`.
            if mine.signature is theirs.signature or mine.signature == theirs.signature:
                order = (theirs.precedence > mine.precedence) - (
                    theirs.precedence < mine.precedence
                )
            else:
                order = 1 if outranks(theirs, mine) else -1
            if order == 0:
                if theirs.heartbeat > mine.heartbeat:
                    merged[name] = theirs
                    replaced = True
                    advanced.append(name)
                elif theirs.heartbeat < mine.heartbeat:
                    differing.append(mine)
            elif order > 0:
                merged[name] = after = _with_higher_heartbeat(theirs, mine, differing)
                replaced = True
                if theirs.incarnation > mine.incarnation or theirs.heartbeat > mine.heartbeat:
                    advanced.append(name)
                if theirs.precedence != mine.precedence:  # not a new signature alone
                    changes.append(MemberChange(mine, after))
            else:
                if theirs.heartbeat > mine.heartbeat:
                    mine = mine.with_heartbeat(theirs.heartbeat)
                    merged[name] = mine
                    replaced = True
                    advanced.append(name)
                differing.append(mine)
        return MergeResult(
            table=MemberTable._of(merged) if replaced else self,
            changes=tuple(changes),
            advanced=frozenset(advanced),
            differing=tuple(differing),
            refused=refused,
            ignored=ignored,
        )

    def remove(self, name: str) -> tuple[MemberTable, RemoveOutcome]:
        """This table with `name`'s record turned into a tombstone at its incarnation (see
        the module docstring), and what happened: only a DEAD or LEFT member is removed."""
        record = self._records.get(name)
        if record is None:
            return self, RemoveOutcome.UNKNOWN
        if record.status is MemberStatus.REMOVED:
            return self, RemoveOutcome.ALREADY_REMOVED
        if record.status not in _REMOVABLE:
            return self, RemoveOutcome.NOT_DOWN
        tombstone = dataclasses.replace(record, status=MemberStatus.REMOVED)
        return self.with_member(tombstone), RemoveOutcome.REMOVED


def _with_higher_heartbeat(winner: Member, loser: Member, differing: list[Member]) -> Member:
    """`winner`, with `loser`'s heartbeat if that is higher; then the merge differs from
    what the other side sent, and `differing` is told so."""
    if winner.heartbeat >= loser.heartbeat:
        return winner
    merged = winner.with_heartbeat(loser.heartbeat)
    differing.append(merged)
    return merged


class _Room:
    """Places for new names in a table being merged, at most `limit` records in all."""

    __slots__ = ("_limit", "_tombstones")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # The tombstones of the table in order, listed once it is full.
        self._tombstones: deque[str] | None = None

    def admits(self, records: dict[str, Member], newcomer: Member) -> bool:
        """True when `records` may take `newcomer`, a new name, dropping the first
        tombstone to make room if the table is full."""
        if len(records) < self._limit:
            return True
        if newcomer.status is _REMOVED:
            return False  # a tombstone of a name this table lacks removes nothing here
        if self._tombstones is None:
            self._tombstones = deque(n for n, r in records.items() if r.status is _REMOVED)
        while self._tombstones:
            name = self._tombstones.popleft()
            if records[name].status is _REMOVED:  # not replaced by a newer record since
                del records[name]
                return True
        return False


# ------------------------------------------------------------------------------ validation


def wire_text(value: object, what: str, max_length: int) -> str:
    """`value` if it is a non-empty printable str of at most `max_length` UTF-8 bytes;
    else ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    _check_text(value, what, max_length)
    return value


def wire_counter(value: object, what: str) -> int:
    """`value` if it is an int in 0 ..= MAX_COUNTER (and not a bool); else ValueError."""
    # bool is an int subclass, and a float is not a counter even when it is whole.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, not {type(value).__name__}")
    _check_counter(value, what)
    return value


def _check_text(text: str, what: str, max_length: int) -> None:
    # isascii() is O(1), so plain ASCII names cost no encoding; a lone surrogate makes
    # encode() raise UnicodeEncodeError, which is a ValueError too.
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if not 0 < size <= max_length:
        raise ValueError(f"{what} must be 1 to {max_length} bytes of UTF-8, got {size}")
    if not text.isprintable():
        # The text itself stays out of the message: it is someone else's, bound for a log.
        raise ValueError(f"{what} must be printable, without control characters")


_PRINTABLE_LIMIT = 256


def printable(text: object, limit: int = _PRINTABLE_LIMIT) -> str:
    """`text` fit for a log line: control and other unprintable characters escaped as in
    a Python literal (a newline becomes the two characters backslash and n), cut at
    `limit` characters. For names and messages that came from outside."""
    value = text if isinstance(text, str) else repr(text)
    if len(value) > limit:
        value = value[:limit] + "..."
    if value.isprintable():
        return value
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in value)


def _check_counter(value: int, what: str) -> None:
    if not 0 <= value <= MAX_COUNTER:
        raise ValueError(f"{what} must be in 0 ..= {MAX_COUNTER}, got {value}")


@dataclass(frozen=True, slots=True)
class MembersChanged:
    """From the MembershipManager: the member table after a change."""

    me: Member
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class Leave:
    """To the gossip protocol: leave the cluster (announce LEAVING, then LEFT, then stop)."""


@dataclass(frozen=True, slots=True)
class Joined:
    """To the gossip protocol: this joining node holds every partition it will own (its
    join handoff is done), so it may announce itself alive and take its share."""


@dataclass(frozen=True, slots=True)
class Remove:
    """To the gossip protocol: take member `name`, DEAD or LEFT, out of the cluster for
    good, leaving a tombstone (`MemberTable.remove`). Answered with a `RemoveResult`, and
    `reply` (when given) called with it, so that a sender who must not block (the
    request path) hears the result without asking."""

    name: str
    reply: Callable[[RemoveResult], object] | None = field(default=None, compare=False)


class RemoveOutcome(Enum):
    """What a `Remove` did."""

    REMOVED = "removed"
    ALREADY_REMOVED = "already removed"
    UNKNOWN = "no member of that name"
    NOT_DOWN = "only a dead or left member can be removed"
    SELF = "a node cannot remove itself"

    @property
    def removed(self) -> bool:
        """The member is out of the cluster now (whether by this call or an earlier one)."""
        return self in (RemoveOutcome.REMOVED, RemoveOutcome.ALREADY_REMOVED)


@dataclass(frozen=True, slots=True)
class RemoveResult:
    """The answer to a `Remove`: what happened, and the member's status before it."""

    name: str
    outcome: RemoveOutcome
    status: MemberStatus | None = None
    """The member's status when the call came; None when it was unknown."""

    @property
    def removed(self) -> bool:
        return self.outcome.removed

    def describe(self) -> str:
        """In words, for a reply or a log line (the name escaped by `printable`)."""
        who = f"member '{printable(self.name)}'"
        if self.outcome is RemoveOutcome.NOT_DOWN and self.status is not None:
            return f"{who} is {self.status.value}: {self.outcome.value}"
        if self.outcome is RemoveOutcome.UNKNOWN:
            return f"{self.outcome.value}: '{printable(self.name)}'"
        return f"{who}: {self.outcome.value}"


@dataclass(frozen=True, slots=True)
class HandedOver:
    """To the gossip protocol: this leaving node has handed every partition over, so it
    may announce the leave complete."""
