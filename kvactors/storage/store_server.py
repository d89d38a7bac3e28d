"""StoreServer: the actor that serves one partition's table.

It is the only writer of its table while it runs. Each key's entry is the record of a
`KeyState`: its surviving versions (siblings) with their dots and causal pasts, and the
clock of what is known to be superseded (kvactors.core.versions).

Two kinds of messages:

- replica operations, which the coordinator sends to every replica of a key (`ReadKey`,
  `MergeKey`) or to the replica that coordinates a write (`WriteKey`, which makes the new
  version: only a replica knows the key's own counters);
- the embedded single-node operations (`Get`, `Put`, `Delete`, `GetMany`, `PutMany`),
  which read the winning value and write without a causal context.

The request path `tell`s a `StoreBatch` and gets the results through a callback; the
writes of one message are applied as one storage transaction (group commit). The store
never waits on anyone.

The messages of the request path are NamedTuples: immutable like frozen dataclasses, and
several times cheaper to build, which counts at one or more per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from kvactors.core.hashtree import (
    HashTree,
    PartitionTrees,
    new_partition_tree,
    record_digest,
)
from kvactors.core.ops import (
    Delete,
    Forget,
    Get,
    GetMany,
    MergeKey,
    MergeMany,
    Put,
    PutMany,
    ReadKey,
    ReadWinner,
    StoreOp,
    WriteKey,
    Written,
)
from kvactors.core.versions import (
    EMPTY_STATE,
    Hlc,
    HlcStamp,
    KeyState,
    VectorClock,
    blind_write,
    coordinate_write,
    merge_states,
    purge_tombstones,
)
from kvactors.errors import StorageError
from kvactors.runtime.dispatch import DispatchedActor, Dispatcher
from kvactors.storage.backends import Table, Write
from kvactors.storage.records import (
    decode_trusted_state,
    encode_state,
    read_blind_base,
    read_winner,
)

__all__ = [
    "DEFAULT_TOMBSTONE_GRACE",
    "BatchSink",
    "CrashNow",
    "Delete",
    "Forget",
    "Get",
    "GetMany",
    "InjectedCrashError",
    "MergeKey",
    "MergeMany",
    "Put",
    "PutMany",
    "ReadKey",
    "ReadWinner",
    "StoreBatch",
    "StoreServer",
    "WriteKey",
    "Written",
]

logger = logging.getLogger(__name__)

# Seconds a key whose versions are all tombstones is kept, so that replicas which missed
# the delete learn it instead of bringing the value back.
DEFAULT_TOMBSTONE_GRACE = 600.0


class BatchSink(Protocol):
    """Who hears how a `StoreBatch` went; called on whichever thread ran the StoreServer."""

    def batch_done(self, token: Any, results: list[Any]) -> None: ...

    def batch_failed(self, token: Any, error: BaseException, handled: bool) -> None: ...


class StoreBatch(NamedTuple):
    """Operations from the request path, answered through a sink, never by `ask`.

    The ops are applied in order, and all writes in one storage transaction, before
    `sink.batch_done(token, results)` gets one result per op. If the StoreServer dies
    first, `sink.batch_failed(token, error, handled)` says whether the batch may have been
    partly applied (`handled`) or certainly was not. A sink and a token rather than two
    callbacks: nothing to build per batch but the tuple itself.
    """

    ops: Sequence[StoreOp]
    sink: BatchSink
    token: Any

    def undelivered(self, error: BaseException, handled: bool) -> None:
        self.sink.batch_failed(self.token, error, handled)


@dataclass(frozen=True, slots=True)
class CrashNow:
    """Fault injection: the StoreServer raises `InjectedCrashError` when it handles this."""


class InjectedCrashError(RuntimeError):
    """The crash a `CrashNow` message causes."""


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
        """Join `state` into the key's; a state sent again changes nothing: no rewrite."""
        current = self.state(key)
        merged = merge_states(current, state)
        if merged is not current:
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


def _dot_floor(stamp: HlcStamp) -> int:
    """The least counter for a new dot: never below the clock's reading, so a key
    forgotten after its tombstones were purged (or lost with a memory node) does not reuse
    a dot that a lagging replica still counts as superseded (Riak's kv679)."""
    return (stamp.wall_ms << 10) + min(stamp.logical, 1023)


class StoreServer(DispatchedActor):
    """Serves one partition's keys over a table it does not own.

    `node` names this replica in the dots of the versions it coordinates; `wall_clock`
    (seconds) feeds its hybrid logical clock. `sync`, for a durable backend, forces
    applied writes to disk: called before a direct `ask` is answered. A `StoreBatch` is
    not synced here: its sink syncs once for every batch of a pass (group commit).
    `trees`, where anti-entropy runs, receives the partition's hash tree, which the
    StoreServer builds from its table when it starts and keeps up to date as it writes.
    """

    def __init__(
        self,
        partition: int,
        table: Table,
        dispatcher: Dispatcher | None = None,
        *,
        node: str = "local",
        wall_clock: Callable[[], float] = time.time,
        tombstone_grace: float = DEFAULT_TOMBSTONE_GRACE,
        sync: Callable[[], None] | None = None,
        trees: PartitionTrees | None = None,
    ) -> None:
        super().__init__(dispatcher)
        self._sync = sync
        self._trees = trees
        self._tree: HashTree | None = None
        self.partition = partition
        self._table = table
        self._node = node
        self._wall_clock = wall_clock
        self._grace_ms = int(tombstone_grace * 1000)
        # One HLC per StoreServer: stamps are only ever compared within one key, and
        # every write observes the key's newest stamp first, so a restarted StoreServer's
        # fresh clock still stamps after everything its key has seen.
        self._hlc = Hlc(node)

    def __str__(self) -> str:
        return f"StoreServer[{self.partition}]"

    def on_start(self) -> None:
        super().on_start()
        if self._trees is not None:
            tree = new_partition_tree()
            for key, record in self._table.items():
                tree.update(key, record_digest(record))
            self._tree = tree
            self._trees.publish(self.partition, tree)

    def on_stop(self) -> None:
        self._withdraw_tree()
        super().on_stop()

    def on_failure(self, *exc_info: Any) -> None:
        self._withdraw_tree()
        super().on_failure(*exc_info)

    def _withdraw_tree(self) -> None:
        if self._trees is not None and self._tree is not None:
            self._trees.withdraw(self.partition, self._tree)

    # A write the disk refused fails its request, not the StoreServer: crashing would not
    # make the disk writable, and reads still work.
    refusals = (StorageError,)

    def _handle_receive(self, message: Any) -> Any:
        # The request path's message first, ahead of Pykka's checks for proxy calls.
        if type(message) is StoreBatch:
            try:
                results = self._apply(message.ops)
            except StorageError as error:
                logger.error("%s: %s", self, error)
                message.sink.batch_failed(message.token, error, True)
                return None
            message.sink.batch_done(message.token, results)
            return None
        return super()._handle_receive(message)

    def on_receive(self, message: Any) -> Any:
        match message:
            case (
                Get() | Put() | Delete() | ReadKey() | ReadWinner() | WriteKey()
                | MergeKey() | MergeMany()
            ):  # fmt: skip
                return self._apply_synced((message,))[0]
            case GetMany(keys):
                return self._apply([Get(key) for key in keys])
            case PutMany(items):
                self._apply_synced([Put(key, value) for key, value in items])
                return None
            case CrashNow():
                raise InjectedCrashError(f"{self}: crash injected")
        return super().on_receive(message)

    def _apply(self, ops: Sequence[StoreOp]) -> list[Any]:
        now_ms = int(self._wall_clock() * 1000)
        batch = _Batch(self._table, now_ms, self._grace_ms)
        results = [self._apply_one(batch, op, now_ms) for op in ops]
        written = batch.commit()
        tree = self._tree
        if tree is not None:
            for key, record in written:
                tree.update(key, None if record is None else record_digest(record))
        return results

    def _apply_synced(self, ops: Sequence[StoreOp]) -> list[Any]:
        results = self._apply(ops)
        if self._sync is not None:
            self._sync()  # durable before the caller hears of it
        return results

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
        if context is None:
            base = batch.blind_base(key)
            if base is not None:
                # It supersedes all the key holds: only the key's context is needed.
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
        # Dots never below the clock's reading: a key forgotten after its tombstones were
        # purged (or lost with a memory node) must not reuse a dot that a lagging replica
        # still counts as superseded (Riak's kv679).
        floor = (stamp.wall_ms << 10) + min(stamp.logical, 1023)
        new_state = coordinate_write(state, self._node, context, value, stamp, min_counter=floor)
        batch.store(key, new_state)
        return Written(new_state, existed)
