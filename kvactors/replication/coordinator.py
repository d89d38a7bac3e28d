"""The quorum coordinator: one client key operation, carried out on the key's N replicas.

Any node coordinates. For each key of a request the RequestService starts one operation
here, on the transport thread, and the operation runs as a small event-driven machine:
it sends replica operations to the replicas by name through a `ReplicaChannel` (which
knows which replica is this node), is called back with each replica's answer, and
feeds the answers into a `QuorumTracker`. Nothing here waits.

Reads (`ReadOperation`) ask every replica for its state of the key and answer as soon as
R of them have; once every replica has answered (or failed) they write the merged state
back to the stale ones (read repair), after the client has its reply.

Writes (`WriteOperation`) need a dot from a replica, since only a replica knows the key's
counters. When this node is a replica, its own StoreServer makes the new version
(`WriteKey`) and the resulting state goes to the other replicas (`MergeKey`); the write
succeeds once W replicas hold it. When it is not, the whole write goes to the first
replica of the key that answers (`Coordinate`), which coordinates it there.

A write that reaches fewer than W replicas is reported as failed, but what did land is
not undone: later reads may see it, and read repair spreads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from kvactors.core.clocks import VectorClock
from kvactors.core.ops import Coordinate, MergeKey, ReadKey, WriteKey, Written
from kvactors.core.quorum import Decision, Outcome, QuorumKind, QuorumTracker
from kvactors.core.versions import KeyState
from kvactors.errors import InternalError, KVActorsError, PeerUnreachableError, UnavailableError
from kvactors.replication.channel import IGNORE_ANSWERS, ReplicaChannel

__all__ = [
    "KeyOutcome",
    "ReadOperation",
    "ReadResult",
    "ResultSink",
    "WriteOperation",
    "WriteResult",
]


class ReadResult(NamedTuple):
    """A successful read: the merged state of the replicas that answered."""

    state: KeyState


class WriteResult(NamedTuple):
    """A successful write: whether a live value preceded it at the coordinating replica,
    and how many live siblings the key has there now (more than one: a concurrent write
    was kept beside it)."""

    existed: bool
    siblings: int


KeyOutcome = ReadResult | WriteResult | KVActorsError
"""What a key operation delivers: its result, or the error its client gets."""

ResultSink = Callable[[KeyOutcome], None]


def _unavailable(tracker: QuorumTracker) -> UnavailableError:
    failed = ", ".join(f"{name}: {code}" for name, code in tracker.errors())
    return UnavailableError(
        f"{tracker.required} of {len(tracker.replicas)} replicas needed"
        + (f"; failed: {failed}" if failed else f"; reachable: {', '.join(tracker.replicas)}")
    )


class ReadOperation:
    """One key read from R of its replicas, with read repair afterwards."""

    __slots__ = ("_channel", "_deliver", "_key", "_partition", "_repaired", "_tracker")

    def __init__(
        self,
        channel: ReplicaChannel,
        key: bytes,
        *,
        partition: int,
        replicas: tuple[str, ...],
        required: int,
        deliver: ResultSink,
    ) -> None:
        self._channel = channel
        self._key = key
        self._partition = partition
        self._deliver = deliver
        self._tracker = QuorumTracker(QuorumKind.READ, replicas, required)
        self._repaired = False

    def start(self) -> None:
        tracker, channel = self._tracker, self._channel
        if tracker.decision.outcome is Outcome.UNAVAILABLE:
            self._deliver(_unavailable(tracker))
            return
        read, partition = ReadKey(self._key), self._partition
        for name in tracker.replicas:
            channel.send(name, partition, read, self, name)

    def replica_done(self, tag: Any, result: Any) -> None:
        if len(self._tracker.replicas) == 1:
            # One copy (N=1, or a cluster of one): its answer is the answer, and there is
            # nothing to compare or repair. (`_repaired` doubles as "answered" here.)
            if not self._repaired:
                self._repaired = True
                self._deliver(ReadResult(result))
            return
        self._settle(self._tracker.on_reply(tag, result))

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        self._settle(self._tracker.on_error(tag, error.code))

    def _settle(self, decision: Decision) -> None:
        tracker = self._tracker
        if decision.is_new:
            if decision.outcome is Outcome.SUCCESS:
                self._deliver(ReadResult(tracker.merged))
            else:
                self._deliver(_unavailable(tracker))
        if tracker.complete and not self._repaired:
            self._repaired = True
            self._repair()

    def _repair(self) -> None:
        """Send the merged state to every replica whose answer lacked part of it."""
        tracker, channel = self._tracker, self._channel
        repair: MergeKey | None = None
        for name in tracker.stale_replicas():
            state = tracker.repair_for(name)
            if state is None:
                continue
            channel.count_read_repair()
            if repair is None or repair.state is not state:
                # One op for every stale replica (each gets the merged state): the
                # channel encodes it once for all the peers among them.
                repair = MergeKey(self._key, state)
            channel.send(name, self._partition, repair, IGNORE_ANSWERS, name)


class WriteOperation:
    """One key write (put, or delete when `value` is None), acknowledged by W replicas."""

    __slots__ = (
        "_attempt",
        "_channel",
        "_context",
        "_context_bytes",
        "_deliver",
        "_done",
        "_hint_for",
        "_key",
        "_local",
        "_next_owners",
        "_partition",
        "_requested_w",
        "_tracker",
        "_value",
        "_written",
    )

    def __init__(
        self,
        channel: ReplicaChannel,
        key: bytes,
        *,
        partition: int,
        value: bytes | None,
        context: tuple[VectorClock, bytes] | None,
        replicas: tuple[str, ...],
        required: int,
        deliver: ResultSink,
        requested_w: int | None = None,
        coordinate_here: bool = False,
        hint_for: tuple[str, ...] = (),
        next_owners: tuple[str, ...] = (),
    ) -> None:
        """`replicas` is the key's preference list (N members, or fewer when the cluster
        has fewer alive). With `coordinate_here` (a peer asked this node to coordinate),
        this node coordinates even when it is not among them, in place of the last.
        `hint_for` names dead members the key would have as replicas: once the write is
        made here, hints are kept for them, as for any replica that fails to take it.
        `next_owners` are joining members that will replicate the key: they get the
        write too (so that a partition they are pulling misses nothing), but do not
        count towards W: they own nothing yet."""
        me = channel.me
        self._local = coordinate_here or me in replicas
        if self._local:
            others = tuple(name for name in replicas if name != me)
            replicas = (me, *others[: max(len(replicas) - 1, 0)]) if replicas else (me,)
        self._channel = channel
        self._key = key
        self._partition = partition
        self._value = value
        self._context = None if context is None else context[0]
        self._context_bytes = None if context is None else context[1]
        self._deliver = deliver
        self._requested_w = requested_w
        self._hint_for = hint_for
        self._next_owners = next_owners
        self._tracker = QuorumTracker(QuorumKind.WRITE, replicas, required)
        self._written: Written | None = None
        self._attempt = 0
        self._done = False

    def start(self) -> None:
        tracker = self._tracker
        if tracker.decision.outcome is Outcome.UNAVAILABLE:
            self._finish(_unavailable(tracker))
        elif self._local:
            op = WriteKey(self._key, self._value, self._context)
            self._channel.send(self._channel.me, self._partition, op, self, self._channel.me)
        else:
            self._forward()

    def replica_done(self, tag: Any, result: Any) -> None:
        if not self._local:
            if tag == self._attempt:  # an answer for an attempt given up on is stale
                self._forwarded_done(result)
            return
        if tag == self._channel.me and self._written is None:
            self._written = result
            if len(self._tracker.replicas) == 1:
                for name in self._hint_for:
                    self._channel.hint(self._partition, self._key, name)
                self._to_next_owners(MergeKey(self._key, result.state))
                self._finish(WriteResult(result.existed, len(result.state.live_values())))
                return
            self._replicate(result.state)
        self._settle(self._tracker.on_reply(tag))

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        if not self._local:
            if tag == self._attempt and not self._done:
                self._forward_failed(error)
        elif tag == self._channel.me and self._written is None:
            # Nothing was made, so nothing went anywhere else either.
            self._finish(error)
        else:
            # The replica may lack the write: it gets the key's state when it is back.
            self._channel.hint(self._partition, self._key, tag)
            self._settle(self._tracker.on_error(tag, error.code))

    # -- coordinated here -----------------------------------------------------------------

    def _replicate(self, state: KeyState) -> None:
        me, channel, partition = self._channel.me, self._channel, self._partition
        for name in self._hint_for:
            channel.hint(partition, self._key, name)
        # One op for every other replica and next owner: the channel encodes it once.
        merge = MergeKey(self._key, state)
        for name in self._tracker.replicas:
            if name != me:  # the write was made here
                channel.send(name, partition, merge, self, name)
        self._to_next_owners(merge)

    def _to_next_owners(self, merge: MergeKey) -> None:
        """The write to the joining members that will own the key; nobody waits for
        them (a merge lost here is caught by the join's catch-up), so they travel in
        bulk: one message per member for the many writes of a tick, not one each."""
        me = self._channel.me
        for name in self._next_owners:
            if name != me:  # the write was made here
                self._channel.send_later(name, self._partition, merge)

    def _settle(self, decision: Decision) -> None:
        if not decision.is_new:
            return
        if decision.outcome is Outcome.SUCCESS:
            written = self._written
            assert written is not None  # the local write answers first
            self._finish(WriteResult(written.existed, len(written.state.live_values())))
        else:
            self._finish(_unavailable(self._tracker))

    # -- coordinated by a replica elsewhere -------------------------------------------------

    def _forward(self) -> None:
        name = self._tracker.replicas[self._attempt]
        op = Coordinate(self._key, self._value, self._context_bytes, self._requested_w)
        self._channel.send(name, self._partition, op, self, self._attempt)

    def _forwarded_done(self, result: Any) -> None:
        if (
            not isinstance(result, list | tuple)
            or len(result) != 2
            or type(result[0]) is not bool
            or type(result[1]) is not int
        ):
            self._finish(InternalError(f"a coordinator answered a write with {result!r:.100}"))
            return
        self._finish(WriteResult(result[0], result[1]))

    def _forward_failed(self, error: KVActorsError) -> None:
        # Only a replica that certainly never got the write is skipped for the next one;
        # after a timeout it may have applied it, and the client must hear that.
        self._attempt += 1
        if isinstance(error, PeerUnreachableError) and self._attempt < len(self._tracker.replicas):
            self._forward()
        else:
            self._finish(error)

    def _finish(self, outcome: KeyOutcome) -> None:
        if not self._done:
            self._done = True
            self._deliver(outcome)
