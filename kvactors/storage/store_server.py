"""StoreServer: the actor that serves one partition's table.

It is the only writer of its table while it runs. What the operations mean is the
`Replica`'s business (kvactors.storage.replica); the StoreServer is its actor shell: it
takes messages from its mailbox, has the replica apply each message's operations as one
batch, keeps the partition's hash tree up to date with what was written, and answers.

Two kinds of messages:

- replica operations, which the coordinator sends to every replica of a key (`ReadKey`,
  `MergeKey`) or to the replica that coordinates a write (`WriteKey`, which makes the new
  version: only a replica knows the key's own counters);
- the embedded single-node operations (`Get`, `Put`, `Delete`, `GetMany`, `PutMany`),
  which read the winning value and write without a causal context.

The request path `tell`s a `StoreBatch` and gets the results through a callback, or,
when the StoreServer is idle on the request path's own thread, has it run `apply_batch`
there and then (`run_now`, kvactors.runtime.dispatch); the writes of one batch are
applied as one storage transaction (group commit). The store never waits on anyone.

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
)
from kvactors.errors import BadRequestError, StorageError
from kvactors.runtime.dispatch import DispatchedActor, Dispatcher
from kvactors.storage.replica import (
    DEFAULT_LIMITS,
    DEFAULT_TOMBSTONE_GRACE,
    Replica,
    ReplicaLimits,
)
from kvactors.storage.tables import Table, Write

__all__ = [
    "DEFAULT_TOMBSTONE_GRACE",
    "BatchSink",
    "CrashNow",
    "InjectedCrashError",
    "StoreBatch",
    "StoreServer",
]

logger = logging.getLogger(__name__)


class BatchSink(Protocol):
    """Who hears how a `StoreBatch` went; called on whichever thread ran the StoreServer."""

    def batch_done(self, token: Any, results: list[Any]) -> None: ...

    def batch_failed(self, token: Any, error: BaseException, handled: bool) -> None: ...


class StoreBatch(NamedTuple):
    """Operations from the request path, answered through a sink, never by `ask`.

    The ops are applied in order, and all writes in one storage transaction, before
    `sink.batch_done(token, results)` gets one result per op: a `BadRequestError` for an
    op the replica refused (`ReplicaLimits`), which changed nothing. If the StoreServer dies
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


class StoreServer(DispatchedActor):
    """Serves one partition's keys over a table it does not own, through a `Replica`.

    `node`, `wall_clock`, `tombstone_grace` and `limits` configure the replica (`Replica`);
    an op it refuses raises its `BadRequestError` to an `ask`, and the StoreServer goes on.
    `sync`, for a durable backend, forces applied writes to disk: called before a direct
    `ask` is answered. A `StoreBatch` is not synced here: its sink syncs once for every
    batch of a pass (group commit). `trees`, where anti-entropy runs, receives the
    partition's hash tree, which the StoreServer builds from its table when it starts and
    keeps up to date with what the replica writes.
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
        limits: ReplicaLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(dispatcher)
        self._sync = sync
        self._trees = trees
        self._tree: HashTree | None = None
        self.partition = partition
        self._table = table
        self._replica = Replica(
            table,
            node=node,
            wall_clock=wall_clock,
            tombstone_grace=tombstone_grace,
            limits=limits,
        )

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
    # make the disk writable, and reads still work. Nor does input the replica refused.
    refusals = (StorageError, BadRequestError)

    def _handle_receive(self, message: Any) -> Any:
        # The request path's message first, ahead of Pykka's checks for proxy calls.
        if type(message) is StoreBatch:
            results = self.apply_batch(message.ops)
            if isinstance(results, list):
                message.sink.batch_done(message.token, results)
            else:
                message.sink.batch_failed(message.token, results, True)
            return None
        return super()._handle_receive(message)

    def apply_batch(self, ops: Sequence[StoreOp]) -> list[Any] | StorageError:
        """A `StoreBatch`'s work: one result per op, or the `StorageError` the table
        refused its writes with (logged; the StoreServer goes on serving).

        Run inside the actor only: as its message's handler, or by the request path's
        `run_now` (kvactors.runtime.dispatch) when the StoreServer is idle on the
        caller's thread, which then acts on the results itself, with no sink.
        """
        try:
            results, written = self._replica.apply(ops)
        except StorageError as error:
            logger.error("%s: %s", self, error)
            return error
        if self._tree is not None:
            self._track(written)
        return results

    def on_receive(self, message: Any) -> Any:
        match message:
            case (
                Get() | Put() | Delete() | ReadKey() | ReadWinner() | WriteKey()
                | MergeKey() | MergeMany()
            ):  # fmt: skip
                return _refused_or(self._apply_synced((message,)))[0]
            case GetMany(keys):
                return self._apply([Get(key) for key in keys])
            case PutMany(items):
                _refused_or(self._apply_synced([Put(key, value) for key, value in items]))
                return None
            case CrashNow():
                raise InjectedCrashError(f"{self}: crash injected")
        return super().on_receive(message)

    def _apply(self, ops: Sequence[StoreOp]) -> list[Any]:
        results, written = self._replica.apply(ops)
        if self._tree is not None:
            self._track(written)
        return results

    def _track(self, written: list[Write]) -> None:
        """The partition's hash tree follows what the replica wrote (one call a batch)."""
        tree = self._tree
        assert tree is not None
        tree.update_records(written)

    def _apply_synced(self, ops: Sequence[StoreOp]) -> list[Any]:
        results = self._apply(ops)
        if self._sync is not None:
            self._sync()  # durable before the caller hears of it
        return results


def _refused_or(results: list[Any]) -> list[Any]:
    """`results`, for an `ask`; raises the first op's refusal, if the replica refused
    one (the caller hears of it; the others were applied)."""
    for result in results:
        if isinstance(result, BadRequestError):
            raise result
    return results
