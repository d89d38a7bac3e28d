"""Replica: what one replica of a partition does with the operations it is sent.

The key-value semantics of a replica, over one table and with no actor around it (riak_core
keeps them out of the vnode container the same way): a `StoreServer` owns one `Replica`
and hands it each message's operations; tests drive it directly over a `MemoryTable` with
a fake wall clock.

Each key's record is a `KeyState`: its surviving versions (siblings) with their dots and
causal pasts, and the clock of what is known to be superseded (kvactors.core.versions).
`Replica.apply` runs one message's operations in order, as one batch:

- reads see the batch's earlier writes;
- every changed record is written once, all in one table transaction (group commit), and
  a record nothing changed is not rewritten (a merge of a state already held, a forget
  that does not match);
- a write without a client context needs only the key's context, which the record keeps
  in front (`read_blind_base`), so the state is not built;
- a key whose versions are all tombstones older than the grace period is forgotten when
  a batch reads it;
- a new version's dot is never below the reading of the hybrid logical clock (`dot_floor`).

What comes from outside is held to `ReplicaLimits` (docs/security.md): a client write
whose context counts further than the clock allows, or that would leave the key more
siblings than `max_siblings`, a larger state than `max_state_bytes` or a history naming
too many nodes, is refused; a merge is never refused for its siblings or size (that
would leave the replicas apart for good), only for stamps or counters from further
ahead than `max_clock_skew`, or a history no context can hold. A refusal is a
`BadRequestError` in that operation's result; the batch's other operations go on.

This is the hottest code of a node: operations are told apart by `type() is` tests
(commonest first, cheaper than `match`), and a batch costs one method call, an operation
little more than the work it asks for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kvactors.config import NodeConfig
from kvactors.core.clocks import (
    MAX_STAMP_LOGICAL,
    Hlc,
    VectorClock,
    counter_ceiling,
    dot_floor,
    first_counter_above,
)
from kvactors.core.context import MAX_CONTEXT_ENTRIES
from kvactors.core.ops import (
    Delete,
    Forget,
    Get,
    MergeKey,
    MergeMany,
    Put,
    ReadKey,
    ReadWinner,
    StoreOp,
    WriteKey,
    Written,
)
from kvactors.core.versions import (
    EMPTY_STATE,
    KeyState,
    blind_write,
    check_state_bounds,
    coordinate_write,
    merge_states,
    purge_tombstones,
    supersedes,
)
from kvactors.errors import BadRequestError
from kvactors.storage.records import (
    decode_trusted_state,
    encode_state,
    read_blind_base,
    read_winner,
    record_size_bound,
)
from kvactors.storage.tables import Table, Write

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TOMBSTONE_GRACE",
    "OPEN_CONTEXT_ENTRIES",
    "Replica",
    "ReplicaLimits",
]

logger = logging.getLogger(__name__)

# Seconds a key whose versions are all tombstones is kept, so that replicas which missed
# the delete learn it instead of bringing the value back.
DEFAULT_TOMBSTONE_GRACE = 600.0

# The highest logical part of a stamp a write orders itself after. A stamp may count
# to MAX_STAMP_LOGICAL within its millisecond (`check_state_bounds`); observing one near
# that would leave this replica's clock to count past it, into stamps other replicas
# refuse. Past this, a write is not ordered after the stamp (it still supersedes what
# its context covers): only which sibling reads show first is at stake.
_OBSERVED_LOGICAL: Final = MAX_STAMP_LOGICAL // 2

OPEN_CONTEXT_ENTRIES: Final = 32
"""How many nodes a key's history may name when a client's context brings names the key
has not seen. A client can invent names; the key keeps them for good (its obsolete clock
never forgets one). Past this many, only the replicas that write the key add their own
names, up to the MAX_CONTEXT_ENTRIES a context holds, so invented names can never fill a
key's history and shut out a replica that has yet to write it."""


@dataclass(frozen=True, slots=True)
class ReplicaLimits:
    """What a replica accepts from outside (docs/configuration.md has each setting).

    `max_siblings` and `max_state_bytes` hold client writes only: a write that would
    leave the key with more siblings, or a larger record, than before and than the
    limit is refused. `max_clock_skew` (seconds) is how far ahead of this replica's clock
    a stamp, or the clock reading a counter stands for, may be, in writes and merges.
    """

    max_siblings: int = 100
    max_state_bytes: int = 4 * 1024 * 1024
    max_clock_skew: float = 60.0

    @classmethod
    def from_config(cls, config: NodeConfig) -> ReplicaLimits:
        return cls(config.max_siblings, config.max_state_bytes, config.max_clock_skew)


DEFAULT_LIMITS: Final = ReplicaLimits()


class Replica:
    """One partition's replica over a table it does not own, which nobody else writes
    while it runs.

    `node` names this replica in the dots of the versions it coordinates; `wall_clock`
    (seconds) feeds its hybrid logical clock; a key holding only tombstones at least
    `tombstone_grace` seconds old is forgotten; `limits` bound what comes from outside.
    """

    __slots__ = ("_grace_ms", "_hlc", "_limits", "_node", "_skew_ms", "_table", "_wall_clock")

    def __init__(
        self,
        table: Table,
        *,
        node: str = "local",
        wall_clock: Callable[[], float] = time.time,
        tombstone_grace: float = DEFAULT_TOMBSTONE_GRACE,
        limits: ReplicaLimits = DEFAULT_LIMITS,
    ) -> None:
        self._table = table
        self._node = node
        self._wall_clock = wall_clock
        self._grace_ms = int(tombstone_grace * 1000)
        self._limits = limits
        self._skew_ms = int(limits.max_clock_skew * 1000)
        # One HLC per replica: stamps are only ever compared within one key, and every
        # write with a context observes the key's newest stamp first, so a restarted
        # replica's fresh clock still stamps after everything its key has seen.
        self._hlc = Hlc(node)

    def apply(self, ops: Sequence[StoreOp]) -> tuple[list[Any], list[Write]]:
        """Apply `ops` in order as one batch: (one result per op, the records written,
        None for a deleted key). The writes reach the table in one `Table.apply` (one
        transaction) before this returns."""
        if len(ops) == 1 and type(ops[0]) is ReadWinner:
            # A plain get, alone in its message (the commonest batch of all): no batch
            # to see earlier writes, no clock to read, nothing to write.
            record = self._table.get(ops[0].key)
            return [_EMPTY_WINNER if record is None else read_winner(record)], []
        now_ms = int(self._wall_clock() * 1000)
        batch = _Batch(self._table, now_ms, self._grace_ms)
        apply_one = self._apply_one
        results: list[Any] = []
        for op in ops:
            try:
                if type(op) is WriteKey:  # a client write, the commonest: no dispatch call
                    results.append(self._write(batch, op.key, op.value, op.context, now_ms))
                else:
                    results.append(apply_one(batch, op, now_ms))
            except BadRequestError as refusal:  # this op alone is refused, before any change
                results.append(refusal)
        return results, batch.commit()

    def _apply_one(self, batch: _Batch, op: Any, now_ms: int) -> Any:
        # `type() is` tests, commonest first: cheaper than `match` on this hot path.
        kind = type(op)
        if kind is ReadWinner:
            return batch.winner(op.key)
        if kind is ReadKey:
            return batch.state(op.key)
        if kind is WriteKey:
            return self._write(batch, op.key, op.value, op.context, now_ms)
        if kind is MergeKey:
            self._merge(batch, op.key, op.state, now_ms)
            return None  # nobody needs the result, and a peer would pay to receive it
        if kind is MergeMany:
            for key, state in op.items:
                try:
                    self._merge(batch, key, state, now_ms)
                except BadRequestError as refusal:
                    # A bulk transfer (a join's pull) goes on without the one key: failing
                    # the batch would have it sent again, and refused again, for ever.
                    logger.warning("merge of key %.60r refused: %s", key, refusal)
            return None
        if kind is Forget:
            return batch.forget(op.key, op.record)
        if kind is Get:
            return batch.winner(op.key)[0]
        if kind is Put:
            self._write(batch, op.key, op.value, None, now_ms)
            return None
        if kind is Delete:
            return self._write(batch, op.key, None, None, now_ms).existed
        raise TypeError(f"not a store operation: {op!r}")

    def _write(
        self,
        batch: _Batch,
        key: bytes,
        value: bytes | None,
        context: VectorClock | None,
        now_ms: int,
    ) -> Written:
        """Coordinate a write here: a put (`value` bytes) or a delete (None) that
        supersedes `context`, or everything this replica holds when `context` is None.
        Raises BadRequestError, before any change, for a write `ReplicaLimits` refuse."""
        if context is not None:
            self._check_context(context, counter_ceiling(now_ms + self._skew_ms))
        else:
            base = batch.blind_base(key)
            if base is not None:
                # It supersedes all the key holds: only the key's context is needed, and
                # no stamp need be observed, since no sibling is left to order against.
                existed, known, old_size = base
                stamp = self._hlc.now(now_ms)
                try:
                    new_state = blind_write(known, self._node, value, stamp, dot_floor(stamp))
                except ValueError as error:
                    raise _exhausted(error) from None
                # `_check_dot`, `_check_history` and `_check_size`, each called only when
                # its cheapest test does not show it passes (the commonest write: every
                # call counts). The new dot is the highest counter of this node in the
                # key's context, the one `_check_dot` reads.
                ceiling = counter_ceiling(now_ms + self._skew_ms)
                if new_state.versions[0].dot.counter > ceiling:
                    self._check_dot(new_state, ceiling)
                if len(new_state.context.entries) > OPEN_CONTEXT_ENTRIES:
                    self._check_history(known, new_state, None)
                if record_size_bound(new_state) > self._limits.max_state_bytes:
                    self._check_size(new_state, lambda: old_size)
                batch.store(key, new_state)
                written: Written = _new_tuple(Written, (new_state, existed))  # `_written`
                return written
        state = batch.state(key)
        winner = state.winner
        existed = winner is not None and winner.value is not None
        stamp = self._hlc.now(now_ms)
        if winner is not None and stamp.wall_ms <= winner.stamp.wall_ms:
            # Stamp after everything the key has seen, even from a clock running ahead;
            # but not after a stamp a merge would refuse now (stored before such stamps
            # were refused), nor one that leaves this clock too little to count on.
            ahead = winner.stamp
            if ahead.wall_ms <= now_ms + self._skew_ms and ahead.logical <= _OBSERVED_LOGICAL:
                stamp = self._hlc.observe(ahead, now_ms)
        try:
            new_state = coordinate_write(
                state,
                self._node,
                state.context if context is None else context,
                value,
                stamp,
                min_counter=dot_floor(stamp),
            )
        except ValueError as error:
            raise _exhausted(error) from None
        self._check_dot(new_state, counter_ceiling(now_ms + self._skew_ms))
        # As on the blind path: each check called only when its cheapest test does not
        # show it passes (and the state's own context is not computed for nothing).
        if len(new_state.versions) > self._limits.max_siblings:
            self._check_siblings(state, new_state)
        if len(new_state.context.entries) > OPEN_CONTEXT_ENTRIES:
            self._check_history(state.context, new_state, context)
        if record_size_bound(new_state) > self._limits.max_state_bytes:
            self._check_size(new_state, lambda: _record_size(state))
        batch.store(key, new_state)
        return _written(new_state, existed)

    def _merge(self, batch: _Batch, key: bytes, state: KeyState, now_ms: int) -> None:
        """Join another replica's `state` into the key's. Never refused for its siblings
        or size; refused if a stamp or counter runs further ahead than the clock allows."""
        try:
            check_state_bounds(state, now_ms + self._skew_ms)
        except ValueError as error:
            raise BadRequestError(f"merge refused: {error}") from None
        batch.merge(key, state)

    # -- limits of client writes (ReplicaLimits) ----------------------------------------

    def _check_context(self, context: VectorClock, ceiling: int) -> None:
        """A client's context counts no further than a clock `max_clock_skew` ahead of
        this replica's could have (`counter_ceiling`): a counter near 2**64 would leave
        the key no room for another write."""
        too_high = first_counter_above(context, ceiling)
        if too_high is not None:
            raise BadRequestError(
                f"context is not one a node made: a counter is {too_high[1]}, above "
                f"{ceiling}, the highest a clock at most max_clock_skew "
                f"({self._limits.max_clock_skew:g} s) ahead of this node's could have "
                "made; use the context a get returned"
            )

    def _check_dot(self, new: KeyState, ceiling: int) -> None:
        """The new version's dot is no higher than a merge would take (`_merge`), so that
        every other replica takes the state this write leaves. A key pushed to the
        ceiling refuses writes here for the millisecond it takes the ceiling to rise."""
        counter = new.context.counter(self._node)  # the new dot: the highest of this node
        if counter > ceiling:
            raise BadRequestError(
                f"the key's counter for this node is {counter}, past the highest its "
                "clock allows now; try again in a moment"
            )

    def _check_siblings(self, old: KeyState, new: KeyState) -> None:
        limit = self._limits.max_siblings
        count = len(new.versions)
        if count > limit and count > len(old.versions):
            raise BadRequestError(
                f"the key has {len(old.versions)} siblings and this write would add "
                f"another, past max_siblings ({limit}); resolve them: read the key (get) "
                "and write with the context it returns"
            )

    def _check_history(
        self, old_history: VectorClock, new: KeyState, context: VectorClock | None
    ) -> None:
        """The nodes the key's history (its context) names: at most MAX_CONTEXT_ENTRIES
        (what a context holds), and at most OPEN_CONTEXT_ENTRIES when the client's
        context brings names the key has not seen (this replica's own is not counted)."""
        entries = len(new.context.entries)
        if entries <= OPEN_CONTEXT_ENTRIES:
            return
        if entries > MAX_CONTEXT_ENTRIES:
            raise BadRequestError(
                f"this write would leave the key's history naming {entries} nodes; a "
                f"context holds at most {MAX_CONTEXT_ENTRIES}"
            )
        own_is_new = old_history.counter(self._node) == 0
        brought = entries - len(old_history.entries) - own_is_new
        if context is not None and brought > 0:
            raise BadRequestError(
                f"context names {brought} nodes the key has not seen, which would leave "
                f"its history naming {entries} nodes (more than {OPEN_CONTEXT_ENTRIES} "
                "with names from a client); use the context a get returned"
            )

    def _check_size(self, new: KeyState, old_size: Callable[[], int]) -> None:
        limit = self._limits.max_state_bytes
        if record_size_bound(new) <= limit:  # the usual write: far below, nothing to encode
            return
        size = len(encode_state(new))
        if size > limit and size > old_size():
            raise BadRequestError(
                f"this write would leave the key's stored state at {size} bytes, past "
                f"max_state_bytes ({limit}); write a smaller value, or resolve the key's "
                "siblings: read it (get) and write with the context it returns"
            )


# `Written(state, existed)` without the NamedTuple's own __new__ (a Python frame): every
# coordinated write answers one.
_new_tuple = tuple.__new__


def _written(state: KeyState, existed: bool) -> Written:
    written: Written = _new_tuple(Written, (state, existed))
    return written


# What a get of a key with no record answers.
_EMPTY_WINNER: Final = (None, EMPTY_STATE.encoded_context())


def _record_size(state: KeyState) -> int:
    return 0 if state.is_empty else len(encode_state(state))


def _exhausted(error: ValueError) -> BadRequestError:
    # Only a key whose counters came near 2**64 before they were bounded gets here.
    return BadRequestError(f"the key can take no further write here: {error}")


class _Batch:
    """The states one message reads and writes: reads see the message's earlier writes,
    and every changed record is written once, in one transaction, at the end."""

    __slots__ = ("_changed", "_grace_ms", "_now_ms", "_states", "_table")

    def __init__(self, table: Table, now_ms: int, grace_ms: int) -> None:
        self._table = table
        self._now_ms = now_ms
        self._grace_ms = grace_ms
        self._states: dict[bytes, KeyState] = {}
        self._changed: dict[bytes, KeyState] = {}

    def state(self, key: bytes) -> KeyState:
        state = self._states.get(key)
        if state is None:
            record = self._table.get(key)
            state = EMPTY_STATE if record is None else decode_trusted_state(record)
            if state.versions and state.versions[0].value is None:
                # Possibly only tombstones: forget the key once they are old enough.
                purged = purge_tombstones(state, self._now_ms, self._grace_ms)
                if purged is not state:
                    self._changed[key] = purged
                state = purged
            self._states[key] = state
        return state

    def winner(self, key: bytes) -> tuple[bytes | None, bytes]:
        """(winning value or None, encoded context), from the record when this message
        has not touched the key."""
        state = self._states.get(key)
        if state is None:
            record = self._table.get(key)
            if record is not None:
                return read_winner(record)
            state = EMPTY_STATE
        winner = state.winner
        return (None if winner is None else winner.value), state.encoded_context()

    def blind_base(self, key: bytes) -> tuple[bool, VectorClock, int] | None:
        """For a write without a client context: (a live value is there, the key's
        context, the record's size), from the record alone; None when this message has
        touched the key."""
        if key in self._states:
            return None
        record = self._table.get(key)
        if record is None:
            return False, EMPTY_STATE.obsolete, 0
        existed, context = read_blind_base(record)
        return existed, context, len(record)

    def store(self, key: bytes, state: KeyState) -> None:
        self._states[key] = state
        self._changed[key] = state

    def merge(self, key: bytes, state: KeyState) -> None:
        """Join `state` into the key's; a state that brings nothing new (sent again, or
        one sibling of those held) changes nothing: no rewrite."""
        if key not in self._states:
            record = self._table.get(key)
            # Replication's usual merge: a write made over all this replica holds. The
            # record's context tells, so the state held need not be built: the join is
            # `state`, and new (`supersedes`).
            if record is not None and supersedes(state, read_blind_base(record)[1]):
                self._store_merged(key, state)
                return
        current = self.state(key)
        merged = merge_states(current, state)
        # The join may be a new object equal to the current state (siblings merged the
        # long way); states are canonical, so `==` says whether anything was learnt.
        if merged is not current and merged != current:
            self._store_merged(key, merged)

    def _store_merged(self, key: bytes, merged: KeyState) -> None:
        entries = len(merged.context.entries)
        if entries > MAX_CONTEXT_ENTRIES:  # its record could not hold its context
            raise BadRequestError(
                f"merge refused: the key's history would name {entries} nodes; a "
                f"context holds at most {MAX_CONTEXT_ENTRIES}"
            )
        self.store(key, merged)

    def forget(self, key: bytes, record: bytes) -> bool:
        """Delete the key if this message has not touched it and its record is `record`."""
        if key in self._states or self._table.get(key) != record:
            return False
        self.store(key, EMPTY_STATE)
        return True

    def commit(self) -> list[Write]:
        """Write every changed record in one transaction; returns what was written."""
        changed = self._changed
        if not changed:
            return []
        writes: list[Write]
        if len(changed) == 1:  # the usual message: one key, no comprehension
            ((key, state),) = changed.items()
            writes = [(key, None if state.is_empty else encode_state(state))]
        else:
            writes = [
                (key, None if state.is_empty else encode_state(state))
                for key, state in changed.items()
            ]
        self._table.apply(writes)
        return writes
