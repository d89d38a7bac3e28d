"""Gossip: how nodes spread their member tables, find failed members, join and leave.

`GossipState` is one node's side of the protocol, driven by its actor: `tick` every
`GossipConfig.interval` seconds, `on_message` for every gossip message that arrives, and
`leave` / `complete_leave` when the node goes. Each call returns an `Output`: the messages to
send and the membership changes to tell subscribers of.

The exchange (push-pull): each tick a node raises its own heartbeat and sends a `Sync` with
its whole table to a random reachable peer (a suspect counts: it may only be slow). The peer
merges it and answers with a `SyncReply` holding only what the sender lacks or holds in an
older form, plus its own record. Both sides then hold the merge of both tables.

Failure detection: a member whose heartbeat or incarnation has not advanced here for
`suspect_timeout` becomes SUSPECT; `dead_timeout` after that same moment it becomes DEAD. A
member that hears it is accused (any record of itself that outranks its own) refutes by
raising its incarnation above the accusation, keeping its status, as in SWIM. DEAD members
stay in the table and keep being gossiped, and with probability `dead_probe_probability` per
tick a node also syncs with a random DEAD member, so both halves of a healed partition meet
again. LEFT members are never suspected.

Joining: a new node knows only its seeds' endpoints. Until a peer is reachable it sends its
Sync to a random seed, by endpoint alone (`Outgoing.destination` None), every tick; the seed
answers with the whole table, and the joiner turns ALIVE on the first table it gets from
another node. Any node with no reachable peer falls back to its seeds the same way.

Leaving: `leave` marks the node LEAVING at a new incarnation and tells `announce_fanout`
peers; `complete_leave` marks it LEFT and tells them again; after that the node sends nothing.

Removing: `remove` turns a DEAD or LEFT member's record into a tombstone (REMOVED, see
kvactors.core.membership), announced to `announce_fanout` peers, so that stale gossip
cannot bring the member back. The ring never sees tombstones: they are gossip's own.

On the wire a message is a map carrying `GOSSIP_FORMAT` under ``"format"``; a message in
another format (or without one) is refused with a `BadRequestError` naming both formats,
never read as this one.

What a node takes from gossip. Anyone who reaches a node can send it gossip, and a node
relays what it takes, so every message is checked before a record of it is merged:

- a message is refused whole (`message_from_wire` raises `BadRequestError`, and nothing of
  it is merged) when it is malformed, lists more than `MAX_GOSSIP_RECORDS` records (checked
  before any is read), names a member twice, or holds a name or endpoint that is not
  printable or too long (kvactors.core.membership);
- the merge then refuses single records that are implausibly far ahead and ignores new
  members past `MAX_MEMBERS` (kvactors.core.membership); `Output.refused` and
  `Output.ignored` count them, and so do `GossipState.refused_records` and
  `ignored_members`;
- refutation: a node that sees a record of itself that outranks its own (an accusation,
  or an incarnation it never issued) takes the record's incarnation plus one, keeping its
  status, endpoint and client endpoint; so does one that sees its own incarnation with
  another client endpoint. Since an accepted record is at most `MAX_INCARNATION_STEP`
  ahead, there is always room above it: a member "left" at incarnation 2**63 - 1, or a
  member's endpoint pointed elsewhere at 2**63 - 1, is refused by every node that holds
  the member, and one step ahead of what it holds is outranked by the member at once;
- `RefusalLog` decides which refusals a node logs: the first of each sender in each
  interval, the rest counted in one line.

Signatures (a secure cluster). A state given a `RecordSigner` and a `RecordVerifier`
(kvactors.core.member_signatures) signs this node's record whenever its claim changes
and its tombstones, takes from a message only the records signed by a trusted node
(`Output.forged` and `forged_records` count the others), and sends only signed records
(an unsigned one, such as a member remembered from the node's data, stays its own
guess until signed news replaces it). Without them (an insecure cluster) nothing is
signed, the wire form is as before, and a signature that comes anyway is dropped on
arrival, so that it can never outrank the records of this cluster.

Pure logic: no I/O, no clock (`now` comes in, in seconds, from any monotonic clock) and no
global random (a `random.Random` comes in).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Self, TypeAlias, cast

from kvactors.core.member_signatures import MemberSigning, RecordSigner, RecordVerifier
from kvactors.core.membership import (
    MAX_COUNTER,
    MAX_ENDPOINT_LENGTH,
    MAX_MEMBERS,
    MAX_NAME_LENGTH,
    Member,
    MemberChange,
    MemberStatus,
    MemberTable,
    MergeResult,
    RemoveOutcome,
    RemoveResult,
    is_membership_change,
    printable,
    wire_text,
)
from kvactors.errors import BadRequestError

if TYPE_CHECKING:
    import random

__all__ = [
    "GOSSIP_FORMAT",
    "MAX_GOSSIP_RECORDS",
    "GossipConfig",
    "GossipMessage",
    "GossipState",
    "Outgoing",
    "Output",
    "RefusalLog",
    "Sync",
    "SyncReply",
    "WireValue",
    "claimed_sender",
    "message_from_wire",
]

_JOINING, _ALIVE, _LEAVING = MemberStatus.JOINING, MemberStatus.ALIVE, MemberStatus.LEAVING
_SUSPECT, _DEAD, _LEFT = MemberStatus.SUSPECT, MemberStatus.DEAD, MemberStatus.LEFT
_REMOVED = MemberStatus.REMOVED


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timing of the protocol, in seconds. Every node of a cluster should use the same."""

    interval: float = 0.25
    """Between two ticks: one exchange started per tick (per `fanout` peer)."""
    suspect_timeout: float = 3.0
    """Silence after which a member is suspected: well above the time news takes to spread."""
    dead_timeout: float = 7.5
    """Silence after which a member is dead, counted from the same moment as suspicion."""
    fanout: int = 1
    """Peers each tick syncs with."""
    announce_fanout: int = 3
    """Peers told at once that this node is leaving or has left."""
    dead_probe_probability: float = 0.1
    """Chance per tick of also syncing with a random DEAD member, to heal partitions."""

    def __post_init__(self) -> None:
        # Written as `not x > y` so that a NaN is refused as well.
        if not self.interval > 0:
            raise ValueError("gossip interval must be > 0")
        if not self.suspect_timeout > self.interval:
            raise ValueError("suspect_timeout must be longer than one gossip interval")
        if not self.dead_timeout > self.suspect_timeout:
            raise ValueError("dead_timeout must be longer than suspect_timeout")
        if self.fanout < 1 or self.announce_fanout < 1:
            raise ValueError("fanout and announce_fanout must be >= 1")
        if not 0.0 <= self.dead_probe_probability <= 1.0:
            raise ValueError("dead_probe_probability must be in [0, 1]")


# ------------------------------------------------------------------------------ messages

GOSSIP_FORMAT = 1
"""The format of a gossip message's wire form, carried in it as ``"format"``. Raise it with
any change that a node of the previous format would misread (keys a node does not know
it ignores, so adding one needs no new format)."""

MAX_GOSSIP_RECORDS = MAX_MEMBERS
"""Most member records one message lists: a Sync carries a whole table, which holds at
most `MAX_MEMBERS`. A message that lists more is refused whole, before any is read."""

WireValue: TypeAlias = (
    "str | int | float | bool | bytes | list[WireValue] | dict[str, WireValue] | None"
)
"""What the node-to-node codec carries: msgpack's builtin types."""


@dataclass(frozen=True, slots=True)
class _TableMessage:
    """A message carrying member records; `members` holds each member at most once."""

    KIND: ClassVar[str] = ""

    sender: str
    sender_endpoint: str
    members: tuple[Member, ...]

    def to_wire(self) -> dict[str, WireValue]:
        # A record's wire form is a list of str and int, which is a WireValue; the cast
        # only tells mypy so, since list is invariant.
        members = [cast("WireValue", record.to_wire()) for record in self.members]
        return {
            "format": GOSSIP_FORMAT,
            "type": self.KIND,
            "sender": self.sender,
            "endpoint": self.sender_endpoint,
            "members": members,
        }

    @classmethod
    def from_wire(cls, wire: object) -> Self:
        """Inverse of `to_wire`; raises ValueError on anything malformed or of another type,
        BadRequestError (a ValueError) on another format. Keys it does not know are
        ignored, so that newer nodes may add some."""
        data = _check_format(wire)
        if data.get("type") != cls.KIND:
            raise ValueError(f"not a {cls.KIND!r} message: {data.get('type')!r}")
        wire_members = data.get("members")
        if not isinstance(wire_members, list | tuple):
            raise ValueError("gossip members must be a list of member records")
        if len(wire_members) > MAX_GOSSIP_RECORDS:
            raise BadRequestError(
                f"a gossip message lists {len(wire_members)} members; "
                f"at most {MAX_GOSSIP_RECORDS} are taken"
            )
        members = tuple(Member.from_wire(item) for item in wire_members)
        if len({record.name for record in members}) != len(members):
            raise ValueError("a gossip message names a member twice")
        return cls(
            wire_text(data.get("sender"), "sender", MAX_NAME_LENGTH),
            wire_text(data.get("endpoint"), "sender endpoint", MAX_ENDPOINT_LENGTH),
            members,
        )


@dataclass(frozen=True, slots=True)
class Sync(_TableMessage):
    """The sender's whole table; the receiver merges it and answers with a `SyncReply`."""

    KIND: ClassVar[str] = "sync"


@dataclass(frozen=True, slots=True)
class SyncReply(_TableMessage):
    """The records the Sync's sender lacked or held in an older form, and the replier's own."""

    KIND: ClassVar[str] = "sync_reply"


GossipMessage: TypeAlias = Sync | SyncReply

_MESSAGE_KINDS: dict[object, type[Sync] | type[SyncReply]] = {
    Sync.KIND: Sync,
    SyncReply.KIND: SyncReply,
}


def _check_format(data: object) -> Mapping[str, object]:
    """`data` as a message map of GOSSIP_FORMAT; BadRequestError on another format."""
    if not isinstance(data, Mapping):
        raise BadRequestError("a gossip message must be a map")
    found = data.get("format")
    if type(found) is not int or found != GOSSIP_FORMAT:
        described = "without a format" if found is None else f"in gossip format {found!r:.20}"
        raise BadRequestError(
            f"a gossip message {described}; this node speaks gossip format {GOSSIP_FORMAT}"
        )
    return data


def message_from_wire(data: object) -> GossipMessage:
    """Any gossip message from its wire form. Whatever `data` is, this returns a message
    or raises `BadRequestError` (a ValueError): on anything malformed, on a message over
    the bounds, and on a message of another gossip format. Its text never holds a raw
    control character."""
    data = _check_format(data)  # first: another format may not even have a type
    kind_name = data.get("type")
    kind = _MESSAGE_KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise BadRequestError(f"unknown gossip message type: {printable(kind_name, 40)}")
    try:
        return kind.from_wire(data)
    except BadRequestError:
        raise
    except ValueError as exc:
        raise BadRequestError(printable(str(exc))) from None


def claimed_sender(data: object) -> str:
    """The sender a gossip message's wire form names, fit for a log line (escaped by
    `printable`, cut short); "unknown" when it names none. Only a claim: anyone may
    send any name."""
    sender = data.get("sender") if isinstance(data, Mapping) else None
    if not isinstance(sender, str) or not sender:
        return "unknown"
    return printable(sender, MAX_NAME_LENGTH)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to send. `destination` is the member's name, or None for a seed known only
    by its endpoint."""

    destination: str | None
    endpoint: str
    message: GossipMessage


@dataclass(frozen=True, slots=True)
class Output:
    """What one call decided: messages to send, and membership changes to announce."""

    messages: tuple[Outgoing, ...] = ()
    changes: tuple[MemberChange, ...] = ()
    refused: int = 0
    """Records of the message refused as implausible (kvactors.core.membership)."""
    ignored: int = 0
    """Records of new members the message brought that a full table left out."""
    forged: int = 0
    """Records of the message refused for a missing or wrong signature, or one by a node
    not trusted (a secure cluster only)."""


_NOTHING = Output()


class RefusalLog:
    """Which gossip refusals a node logs, so that a flood of them costs a few lines.

    The first refusal of each sender in each `interval` seconds is logged, for at most
    `max_senders` senders an interval (a sender is only a claimed name, and a forger
    may claim a new one each time); the rest are counted, and `summary` hands the count
    over once their interval is over.
    """

    __slots__ = ("_interval", "_logged", "_max_senders", "_started", "_suppressed", "_unreported")

    def __init__(self, interval: float = 10.0, max_senders: int = 8) -> None:
        if not interval > 0 or max_senders < 1:
            raise ValueError("a refusal log needs an interval > 0 and max_senders >= 1")
        self._interval = interval
        self._max_senders = max_senders
        self._started: float | None = None
        self._logged: set[str] = set()
        self._suppressed = 0  # in the current interval
        self._unreported = 0  # in intervals that are over

    def note(self, sender: str, now: float) -> bool:
        """A refusal of `sender`'s gossip at `now`: True when it should be logged."""
        self._roll(now)
        if sender in self._logged or len(self._logged) >= self._max_senders:
            self._suppressed += 1
            return False
        self._logged.add(sender)
        return True

    def summary(self, now: float) -> int:
        """Refusals not logged in intervals that are over by `now`, counted once."""
        self._roll(now)
        count, self._unreported = self._unreported, 0
        return count

    def _roll(self, now: float) -> None:
        if self._started is not None and now - self._started < self._interval:
            return
        self._unreported += self._suppressed
        self._suppressed = 0
        self._logged.clear()
        self._started = now


# ------------------------------------------------------------------------------ the state


class GossipState:
    """One node's gossip state. Not thread-safe: one actor owns it and makes every call.

    `table` must not hold a record of this node that outranks `me`: start a restarted node
    with `join` (or a fresh table) and let refutation raise its incarnation.
    """

    __slots__ = (
        "_candidates",
        "_config",
        "_first_contact",
        "_hold_joining",
        "_last_advance",
        "_me",
        "_seeds",
        "_signing",
        "_table",
        "forged_records",
        "ignored_members",
        "refused_records",
    )

    def __init__(
        self,
        me: Member,
        now: float,
        *,
        config: GossipConfig | None = None,
        table: MemberTable | None = None,
        seeds: Iterable[str] = (),
        hold_joining: bool = False,
        signer: RecordSigner | None = None,
        verifier: RecordVerifier | None = None,
    ) -> None:
        self._config = config or GossipConfig()
        if (signer is None) != (verifier is None):
            raise ValueError("a secure gossip state needs both a signer and a verifier")
        self._signing: MemberSigning | None = None
        if signer is not None and verifier is not None:
            self._signing = MemberSigning(me.name, signer, verifier)
            me = self._signing.sign_own(me)
        self._me = me
        # A new member stays JOINING after contact until `finish_joining` (its partitions
        # are handed to it first); a member the cluster already knew is ALIVE at once.
        self._hold_joining = hold_joining
        self._first_contact = True
        self._table = (table or MemberTable()).with_member(me)
        self._seeds = tuple(dict.fromkeys(seed for seed in seeds if seed != me.endpoint))
        # When each watched member's heartbeat or incarnation last advanced here. Members
        # that are DEAD, LEFT or REMOVED drop out (lazily, see `_detect_failures`); so does
        # this node.
        self._last_advance = {
            name: now
            for name, record in self._table.items()
            if name != me.name and record.status.is_watched
        }
        # (reachable peers, DEAD peers) by name, rebuilt after any membership change.
        self._candidates: tuple[list[str], list[str]] | None = None
        self.refused_records = 0
        """Records refused as implausible since this state was built."""
        self.ignored_members = 0
        """Records of new members left out of a full table since this state was built."""
        self.forged_records = 0
        """Records refused for their signature since this state was built."""

    @classmethod
    def join(
        cls,
        name: str,
        endpoint: str,
        seeds: Iterable[str],
        now: float,
        *,
        config: GossipConfig | None = None,
        incarnation: int = 0,
        hold_joining: bool = False,
        remembered: Iterable[Member] = (),
        client_endpoint: str = "",
        signer: RecordSigner | None = None,
        verifier: RecordVerifier | None = None,
    ) -> GossipState:
        """A node about to join a cluster through any of `seeds` (endpoints; its own is
        skipped). It stays JOINING until another node sends it a table; with
        `hold_joining`, a node new to the cluster stays JOINING after that, until
        `finish_joining`. A node restarted on its data passes the incarnation after the
        one it last had and the members it `remembered`: it is ALIVE at once (a member
        already, it must not look like a newcomer that owns nothing yet), and starts
        with them in its table. `endpoint` is where peers reach it, `client_endpoint`
        where clients do. `signer` and `verifier` make it secure (see the module doc)."""
        remembered = [m for m in remembered if m.name != name]
        status = _ALIVE if remembered else _JOINING
        me = Member(name, endpoint, status, incarnation, 0, client_endpoint)
        table = MemberTable(remembered)
        state = cls(
            me,
            now,
            config=config,
            table=table,
            seeds=seeds,
            hold_joining=hold_joining,
            signer=signer,
            verifier=verifier,
        )
        if not state.seeds:
            raise ValueError("joining a cluster needs the endpoint of another node")
        return state

    @classmethod
    def found_cluster(
        cls,
        name: str,
        endpoint: str,
        now: float,
        *,
        config: GossipConfig | None = None,
        incarnation: int = 0,
        client_endpoint: str = "",
        signer: RecordSigner | None = None,
        verifier: RecordVerifier | None = None,
    ) -> GossipState:
        """The first node of a new cluster: ALIVE, alone, waiting for others to join it.
        `endpoint` is where peers reach it, `client_endpoint` where clients do; `signer`
        and `verifier` make it secure (see the module doc)."""
        me = Member(name, endpoint, _ALIVE, incarnation, 0, client_endpoint)
        return cls(me, now, config=config, signer=signer, verifier=verifier)

    # ------------------------------------------------------------------ read-only views

    @property
    def me(self) -> Member:
        return self._me

    @property
    def name(self) -> str:
        return self._me.name

    @property
    def endpoint(self) -> str:
        return self._me.endpoint

    @property
    def status(self) -> MemberStatus:
        return self._me.status

    @property
    def table(self) -> MemberTable:
        return self._table

    @property
    def seeds(self) -> tuple[str, ...]:
        return self._seeds

    @property
    def config(self) -> GossipConfig:
        return self._config

    def trust_changed(self) -> None:
        """The trusted keys changed: check every signature again from now on."""
        if self._signing is not None:
            self._signing.forget_verified()

    def silence(self, name: str, now: float) -> float | None:
        """Seconds since `name`'s heartbeat last advanced here; None when it is not watched
        (unknown, DEAD, LEFT, REMOVED, or this node itself)."""
        record = self._table.get(name)
        last = self._last_advance.get(name)
        if record is None or last is None or not record.status.is_watched:
            return None
        return now - last

    # ------------------------------------------------------------------ driving calls

    def restarted(self, now: float) -> None:
        """The actor that drives this state restarted: the time it was down is not the
        members' silence, so every watched member's silence counts from `now`."""
        self._last_advance = dict.fromkeys(self._last_advance, now)

    def tick(self, now: float, rng: random.Random) -> Output:
        """Once per interval: heartbeat, failure detection, and a Sync to start an exchange."""
        if self._me.status is _LEFT:
            return _NOTHING
        heartbeat = min(self._me.heartbeat + 1, MAX_COUNTER)  # saturate rather than crash
        self._set_me(self._me.with_heartbeat(heartbeat))
        changes = self._detect_failures(now)
        messages = self._syncs(self._config.fanout, rng)
        _, dead = self._peers()
        probability = self._config.dead_probe_probability
        if dead and probability > 0.0 and rng.random() < probability:
            messages.append(self._sync_to(rng.choice(dead)))
        return Output(tuple(messages), tuple(changes))

    def on_message(self, message: GossipMessage, now: float) -> Output:
        """Merge what a peer sent; answer a Sync with what the peer lacks."""
        if message.sender == self._me.name or self._me.status is _LEFT:
            return _NOTHING
        records, forged = _taken_records(self._signing, message.members)
        result = self._table.merge_tracking(records)
        changes = self._absorb(result, now)
        self.refused_records += result.refused
        self.ignored_members += result.ignored
        self.forged_records += forged
        if isinstance(message, SyncReply):
            return Output((), changes, result.refused, result.ignored, forged)
        reply = SyncReply(self._me.name, self._me.endpoint, self._reply_records(message, result))
        outgoing = Outgoing(message.sender, message.sender_endpoint, reply)
        return Output((outgoing,), changes, result.refused, result.ignored, forged)

    def leave(self, now: float, rng: random.Random) -> Output:
        """Start leaving: LEAVING at a new incarnation (so that it outranks any suspicion),
        announced to `announce_fanout` peers. Nothing when already leaving or gone.

        `now` is unused today; every driving call takes it so that an actor calls them alike.
        """
        if self._me.status in (_LEAVING, _LEFT):
            return _NOTHING
        return self._announce(_LEAVING, self._me.incarnation + 1, rng)

    def finish_joining(self, now: float, rng: random.Random) -> Output:
        """A held join is complete (the node holds its partitions): ALIVE, which outranks
        JOINING at the same incarnation, announced to `announce_fanout` peers."""
        if self._me.status is not _JOINING:
            return _NOTHING
        self._hold_joining = False
        return self._announce(_ALIVE, self._me.incarnation, rng)

    def sync_everyone(self) -> Output:
        """A Sync to every reachable peer at once: a joining node tells the whole cluster
        of itself as soon as it knows it, instead of in log(n) gossip rounds, so that
        every coordinator sends it the writes of its partitions (it pulls them meanwhile)."""
        reachable, _ = self._peers()
        return Output(tuple(self._sync_to(name) for name in reachable))

    @property
    def holding_join(self) -> bool:
        """JOINING after contact, waiting for `finish_joining`."""
        return self._hold_joining and not self._first_contact and self._me.status is _JOINING

    def remove(self, name: str, now: float, rng: random.Random) -> tuple[RemoveResult, Output]:
        """Take DEAD or LEFT member `name` out of the cluster for good: its record becomes
        a tombstone, announced to `announce_fanout` peers (gossip spreads it on from there).
        Refused, with the reason in the result, for any other member and for this node.

        `now` is unused today; every driving call takes it so that an actor calls them alike.
        """
        record = self._table.get(name)
        status = None if record is None else record.status
        if name == self._me.name:
            return RemoveResult(name, RemoveOutcome.SELF, status), _NOTHING
        table, outcome = self._table.remove(name)
        result = RemoveResult(name, outcome, status)
        if outcome is not RemoveOutcome.REMOVED or record is None:
            return result, _NOTHING
        if self._signing is not None:
            table = table.with_member(self._signing.seal_removal(table[name]))
        self._table = table
        self._candidates = None
        self._last_advance.pop(name, None)
        change = MemberChange(record, table[name])
        return result, Output(tuple(self._syncs(self._config.announce_fanout, rng)), (change,))

    def complete_leave(self, now: float, rng: random.Random) -> Output:
        """Finish leaving: LEFT (the strongest status, so the incarnation stays), announced
        to `announce_fanout` peers. After this the node sends and takes nothing."""
        if self._me.status is _LEFT:
            return _NOTHING
        return self._announce(_LEFT, self._me.incarnation, rng)

    # ------------------------------------------------------------------ internals

    def _set_me(self, record: Member) -> None:
        if self._signing is not None:
            record = self._signing.sign_own(record)  # signs only a changed claim
        self._me = record
        self._table = self._table.with_member(record)

    def _announce(self, status: MemberStatus, incarnation: int, rng: random.Random) -> Output:
        before = self._me
        self._set_me(dataclasses.replace(before, status=status, incarnation=incarnation))
        messages = self._syncs(self._config.announce_fanout, rng)
        return Output(tuple(messages), (MemberChange(before, self._me),))

    def _absorb(self, result: MergeResult, now: float) -> tuple[MemberChange, ...]:
        """Take a merge in: answer what it says about this node, note who advanced."""
        before = self._me
        self._table = result.table
        self._set_me(self._own_record_after(result.table[before.name]))
        changes = [change for change in result.changes if change.name != before.name]
        if is_membership_change(before, self._me):
            changes.append(MemberChange(before, self._me))
        if changes:
            self._candidates = None
        if result.advanced:
            self._last_advance.update(dict.fromkeys(result.advanced, now))
            self._last_advance.pop(before.name, None)
        return tuple(changes)

    def _own_record_after(self, seen: Member) -> Member:
        """This node's record once it has seen `seen`, the merged record of itself."""
        me = self._me
        first_contact, self._first_contact = self._first_contact, False
        if first_contact and seen.precedence > me.precedence:
            # The cluster knew this node before (it restarted): it is a member already.
            self._hold_joining = False
        if seen.precedence > me.precedence or (
            seen.precedence == me.precedence and seen.client_endpoint != me.client_endpoint
        ):
            # An accusation, a record of an earlier life, or a claim this node never made
            # (it decides its client endpoint): outrank it, keep our status and endpoints.
            incarnation = min(seen.incarnation + 1, MAX_COUNTER)
            me = dataclasses.replace(me, incarnation=incarnation, heartbeat=seen.heartbeat)
        elif seen.heartbeat > me.heartbeat:
            me = me.with_heartbeat(seen.heartbeat)
        if me.status is _JOINING and not self._hold_joining:
            me = dataclasses.replace(me, status=_ALIVE)  # another node has sent its table
        return me

    def _reply_records(self, sync: Sync, result: MergeResult) -> tuple[Member, ...]:
        """What the Sync's sender lacks or holds older, and our own record, each once."""
        me = self._me
        records = [me]
        records.extend(record for record in result.differing if record.name != me.name)
        if len(self._table) > len(sync.members):
            theirs = {record.name for record in sync.members}
            records.extend(
                record
                for record in self._table.values()
                if record.name not in theirs and record.name != me.name
            )
        if self._signing is not None:
            return tuple(record for record in records if record.signature is not None)
        return tuple(records)

    def _detect_failures(self, now: float) -> list[MemberChange]:
        """Suspect members silent for suspect_timeout, declare dead those silent for
        dead_timeout; both counted from the last advance of their heartbeat here."""
        last_advance = self._last_advance
        suspect_after = self._config.suspect_timeout
        # Most ticks find nobody silent for long; min() over the times settles that in C.
        if not last_advance or now - min(last_advance.values()) < suspect_after:
            return []
        silent = [name for name, last in last_advance.items() if now - last >= suspect_after]
        accusations: list[Member] = []
        for name in silent:
            record = self._table[name]
            if not record.status.is_watched:
                del last_advance[name]  # DEAD, LEFT or REMOVED: no longer watched
            elif record.status is not _SUSPECT:
                accusations.append(dataclasses.replace(record, status=_SUSPECT))
            elif now - last_advance[name] >= self._config.dead_timeout:
                accusations.append(dataclasses.replace(record, status=_DEAD))
                del last_advance[name]
        if not accusations:
            return []
        # An accusation keeps the incarnation and raises the status, so it wins the merge.
        self._table, changes = self._table.merge(accusations)
        self._candidates = None
        return list(changes)

    def _peers(self) -> tuple[list[str], list[str]]:
        """(reachable peers, DEAD peers), by name, in table order."""
        if self._candidates is None:
            reachable: list[str] = []
            dead: list[str] = []
            for name, record in self._table.items():
                if name == self._me.name:
                    continue
                if record.status.is_reachable:
                    reachable.append(name)
                elif record.status is _DEAD:
                    dead.append(name)
            self._candidates = (reachable, dead)
        return self._candidates

    def _syncs(self, count: int, rng: random.Random) -> list[Outgoing]:
        """Syncs to `count` random reachable peers, or to one random seed when none is."""
        reachable, _ = self._peers()
        if reachable:
            chosen = rng.sample(reachable, min(count, len(reachable)))
            return [self._sync_to(name) for name in chosen]
        if self._seeds:
            return [Outgoing(None, rng.choice(self._seeds), self._sync())]
        return []

    def _sync_to(self, name: str) -> Outgoing:
        return Outgoing(name, self._table[name].endpoint, self._sync())

    def _sync(self) -> Sync:
        table, signing = self._table, self._signing
        records = table.members() if signing is None else signing.signed_records(table)
        return Sync(self._me.name, self._me.endpoint, records)


def _taken_records(
    signing: MemberSigning | None, records: tuple[Member, ...]
) -> tuple[Sequence[Member], int]:
    """The records of a message a node merges, and how many it refused for their
    signature (see the module docstring)."""
    if signing is not None:
        return signing.authentic(records)
    if all(record.signature is None for record in records):
        return records, 0
    return [dataclasses.replace(record, signature=None) for record in records], 0
