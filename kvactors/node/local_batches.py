"""Local batches: replica operations for this node's own StoreServers.

Operations are queued per partition while the transport drains what is ready; on the
flush each partition's queue goes to its StoreServer as one `StoreBatch` (a `tell`,
never an `ask`), and the results come back through `batch_done` (the `BatchSink`), on
whichever thread ran the StoreServer. A batch for a partition whose StoreServer is
restarting is parked and sent again on the next tick; under group commit the batches
of one flush share one storage transaction and wait for one sync.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pykka

from kvactors.core.ops import StoreOp
from kvactors.errors import InternalError, KVActorsError
from kvactors.node.group_commit import GroupCommit
from kvactors.replication.channel import ReplicaTarget
from kvactors.runtime import dispatch
from kvactors.storage.store_server import StoreBatch
from kvactors.storage.store_supervisor import PartitionDirectory

__all__ = ["Entry", "LocalBatches"]

Entry = tuple[ReplicaTarget, Any, StoreOp]
"""One queued replica operation: who hears the answer, which replica it was, and the op."""


class LocalBatches:
    """Queues replica ops per partition and sends each queue as one StoreBatch."""

    def __init__(
        self,
        directory: PartitionDirectory,
        call_soon: Callable[[Callable[[], None]], object],
        in_loop_thread: Callable[[], bool],
    ) -> None:
        self._directory = directory
        self._call_soon = call_soon
        self._in_loop_thread = in_loop_thread
        self.queued: defaultdict[int, list[Entry]] = defaultdict(list)
        """Per partition, the ops of this flush; producers append to it directly."""
        self._parked: list[tuple[int, Entry]] = []
        self.group: GroupCommit | None = None
        """Set where acknowledgements wait for a storage sync."""
        self.batches = 0
        self.retried_ops = 0

    def flush(self) -> None:
        """Every queued batch to its StoreServer. Under group commit, the writes the
        StoreServers make meanwhile on this thread are committed together, in one
        transaction, at the end (they are acknowledged only after the sync anyway)."""
        group = self.group
        if group is None:
            self._send_all()
        elif self.queued:
            mark = group.begin()
            try:
                self._send_all()
            finally:
                group.end(mark)
        if group is not None:
            group.flush()

    def on_tick(self) -> None:
        """Queue the parked batches again: their StoreServers may be back."""
        if self._parked:
            parked, self._parked = self._parked, []
            for partition, entry in parked:
                self.queued[partition].append(entry)

    def _send_all(self) -> None:
        while self.queued:
            queued, self.queued = self.queued, defaultdict(list)
            for partition, entries in queued.items():
                self._send(partition, entries)

    def _send(self, partition: int, entries: list[Entry]) -> None:
        ref = self._directory.current(partition)
        if ref is None or not ref.is_alive():
            self._parked.extend((partition, entry) for entry in entries)
            return
        batch = StoreBatch([entry[2] for entry in entries], self, (partition, entries))
        try:
            dispatch.tell(ref, batch)
        except pykka.ActorDeadError:
            self._parked.extend((partition, entry) for entry in entries)
            return
        self.batches += 1

    # -- BatchSink: called on whichever thread ran the StoreServer ----------------------

    def batch_done(self, token: tuple[int, list[Entry]], results: list[Any]) -> None:
        if self._in_loop_thread():
            self._applied(token[0], token[1], results)
        else:
            self._call_soon(lambda: self._applied(token[0], token[1], results))

    def batch_failed(
        self, token: tuple[int, list[Entry]], error: BaseException, handled: bool
    ) -> None:
        partition, entries = token
        if handled:
            self._call_soon(lambda: self.failed(partition, entries, error))
        else:
            self._call_soon(lambda: self._park(partition, entries))

    def _applied(self, partition: int, entries: list[Entry], results: list[Any]) -> None:
        if self.group is None:
            self.done(entries, results)
        else:
            self.group.applied((partition, entries, results))  # its flush syncs them

    def done(self, entries: list[Entry], results: list[Any]) -> None:
        """Each op's result to its target; an op the replica refused fails alone."""
        for (target, tag, _), result in zip(entries, results):  # noqa: B905 - equal by design
            if isinstance(result, KVActorsError):
                target.replica_failed(tag, result)
            else:
                target.replica_done(tag, result)

    def failed(self, partition: int, entries: list[Entry], error: BaseException) -> None:
        """The batch may have been partly applied: each op fails."""
        failure: KVActorsError = InternalError(f"partition {partition} failed: {error!r}")
        for target, tag, _ in entries:
            target.replica_failed(tag, failure)

    def _park(self, partition: int, entries: list[Entry]) -> None:
        # Never applied: it goes to the restarted StoreServer once there is one.
        self.retried_ops += len(entries)
        self._parked.extend((partition, entry) for entry in entries)
