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
- a new version's dot is never below the reading of the hybrid logical clock (`_dot_floor`).

This is the hottest code of a node: operations are told apart by `type() is` tests
(commonest first, cheaper than `match`), and a batch costs one method call, an operation
little more than the work it asks for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from kvactors.core.clocks import Hlc, HlcStamp, VectorClock
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
    coordinate_write,
    merge_states,
    purge_tombstones,
)
from kvactors.storage.records import (
    decode_trusted_state,
    encode_state,
    read_blind_base,
    read_winner,
)
from kvactors.storage.tables import Table, Write

__all__ = ["DEFAULT_TOMBSTONE_GRACE", "Replica"]

# Seconds a key whose versions are all tombstones is kept, so that replicas which missed
# the delete learn it instead of bringing the value back.
DEFAULT_TOMBSTONE_GRACE = 600.0


class Replica:
    """One partition's replica over a table it does not own, which nobody else writes
    while it runs.

    `node` names this replica in the dots of the versions it coordinates; `wall_clock`
    (seconds) feeds its hybrid logical clock; a key holding only tombstones at least
    `tombstone_grace` seconds old is forgotten.
    """

    __slots__ = ("_grace_ms", "_hlc", "_node", "_table", "_wall_clock")

    def __init__(
        self,
        table: Table,
        *,
        node: str = "local",
        wall_clock: Callable[[], float] = time.time,
        tombstone_grace: float = DEFAULT_TOMBSTONE_GRACE,
    ) -> None:
        self._table = table
        self._node = node
        self._wall_clock = wall_clock
        self._grace_ms = int(tombstone_grace * 1000)
        # One HLC per replica: stamps are only ever compared within one key, and every
        # write with a context observes the key's newest stamp first, so a restarted
        # replica's fresh clock still stamps after everything its key has seen.
        self._hlc = Hlc(node)

    def apply(self, ops: Sequence[StoreOp]) -> tuple[list[Any], list[Write]]:
        """Apply `ops` in order as one batch: (one result per op, the records written,
        None for a deleted key). The writes reach the table in one `Table.apply` (one
        transaction) before this returns."""
        now_ms = int(self._wall_clock() * 1000)
        batch = _Batch(self._table, now_ms, self._grace_ms)
        apply_one = self._apply_one
        results = [apply_one(batch, op, now_ms) for op in ops]
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
            batch.merge(op.key, op.state)
            return None  # nobody needs the result, and a peer would pay to receive it
        if kind is MergeMany:
            for key, state in op.items:
                batch.merge(key, state)
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
        supersedes `context`, or everything this replica holds when `context` is None."""
        if context is None:
            base = batch.blind_base(key)
            if base is not None:
                # It supersedes all the key holds: only the key's context is needed, and
                # no stamp need be observed, since no sibling is left to order against.
                existed, known = base
                stamp = self._hlc.now(now_ms)
                new_state = blind_write(known, self._node, value, stamp, _dot_floor(stamp))
                batch.store(key, new_state)
                return Written(new_state, existed)
        state = batch.state(key)
        winner = state.winner
        existed = winner is not None and winner.value is not None
        stamp = self._hlc.now(now_ms)
        if winner is not None and winner.stamp.wall_ms >= stamp.wall_ms:
            # Stamp after everything the key has seen, even from a clock running ahead.
            stamp = self._hlc.observe(winner.stamp, now_ms)
        if context is None:
            context = state.context  # a blind write supersedes what this replica holds
        new_state = coordinate_write(
            state, self._node, context, value, stamp, min_counter=_dot_floor(stamp)
        )
        batch.store(key, new_state)
        return Written(new_state, existed)


def _dot_floor(stamp: HlcStamp) -> int:
    """The least counter for a new dot: never below the clock's reading, so a key
    forgotten after its tombstones were purged (or lost with a memory node) does not reuse
    a dot that a lagging replica still counts as superseded (Riak's kv679).

    Ten bits for the logical part; past 1023 stamps in one millisecond the floor stops
    rising, and the key's own counters keep its dots apart (`coordinate_write` takes the
    greater of the two)."""
    return (stamp.wall_ms << 10) + min(stamp.logical, 1023)


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

    def blind_base(self, key: bytes) -> tuple[bool, VectorClock] | None:
        """For a write without a client context: (a live value is there, the key's
        context), from the record alone; None when this message has touched the key."""
        if key in self._states:
            return None
        record = self._table.get(key)
        if record is None:
            return False, EMPTY_STATE.obsolete
        return read_blind_base(record)

    def store(self, key: bytes, state: KeyState) -> None:
        self._states[key] = state
        self._changed[key] = state

    def merge(self, key: bytes, state: KeyState) -> None:
        """Join `state` into the key's; a state that brings nothing new (sent again, or
        one sibling of those held) changes nothing: no rewrite."""
        current = self.state(key)
        merged = merge_states(current, state)
        # The join may be a new object equal to the current state (siblings merged the
        # long way); states are canonical, so `==` says whether anything was learnt.
        if merged is not current and merged != current:
            self.store(key, merged)

    def forget(self, key: bytes, record: bytes) -> bool:
        """Delete the key if this message has not touched it and its record is `record`."""
        if key in self._states or self._table.get(key) != record:
            return False
        self.store(key, EMPTY_STATE)
        return True

    def commit(self) -> list[Write]:
        """Write every changed record in one transaction; returns what was written."""
        if not self._changed:
            return []
        writes: list[Write] = [
            (key, None if state.is_empty else encode_state(state))
            for key, state in self._changed.items()
        ]
        self._table.apply(writes)
        return writes
