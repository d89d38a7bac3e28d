"""Local batches: replica operations for this node's own StoreServers.

Operations are queued per partition while the transport drains what is ready; on the
flush each partition's queue is applied by its StoreServer as one batch. When the
StoreServer is idle and runs on this thread (the transport's, as it does while the node
serves), it applies the batch there and then (`run_now`: no message, mailbox or
dispatch) and the results are acted on at once. Otherwise the batch goes to it as a
`StoreBatch` (a `tell`, never an `ask`, behind the mail it has), and the results come
back through `batch_done` (the `BatchSink`), on whichever thread ran the StoreServer.
A batch for a partition whose StoreServer is restarting is parked and sent again on the
next tick; under group commit the batches of one flush share one storage transaction
and wait for one sync.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pykka

from kvactors.core.ops import StoreOp
from kvactors.errors import InternalError, KVActorsError
from kvactors.node.group_commit import GroupCommit
from kvactors.replication.channel import ReplicaTarget
from kvactors.runtime import dispatch
from kvactors.runtime.dispatch import NOT_RUN, Dispatcher
from kvactors.storage.store_server import StoreBatch, StoreServer
from kvactors.storage.store_supervisor import PartitionDirectory

__all__ = ["Entry", "LocalBatches"]

logger = logging.getLogger(__name__)

Entry = tuple[ReplicaTarget, Any, StoreOp]
"""One queued replica operation: who hears the answer, which replica it was, and the op."""


class LocalBatches:
    """Queues replica ops per partition; each queue is one batch for its StoreServer."""

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
        self._dispatcher: Dispatcher | None = None
        """The StoreServers' dispatcher, learned from the first one sent a batch."""
        self.group: GroupCommit | None = None
        """Set where acknowledgements wait for a storage sync."""
        self.retried_ops = 0

    def flush(self) -> None:
        """Every queued batch to its StoreServer. Under group commit, the writes the
        StoreServers make meanwhile on this thread are committed together, in one
        transaction, at the end (they are acknowledged only after the sync anyway)."""
        group = self.group
        if self.queued:
            if group is None:
                self._send_all()
            else:
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

    def _dispatcher_here(self) -> Dispatcher | None:
        """The StoreServers' dispatcher if it runs them on this thread, the transport's,
        where their results may be acted on at once; checked once per flush."""
        dispatcher = self._dispatcher
        if dispatcher is not None and self._in_loop_thread() and dispatcher.runs_here():
            return dispatcher
        return None

    def _send_all(self) -> None:
        # The request path's hottest step, one pass per partition: an idle StoreServer on
        # this thread applies its batch now and its results are acted on at once; any
        # other gets a StoreBatch (`_send`). Answers may queue more ops: the loop takes them.
        here = self._dispatcher_here()
        current = self._directory.current
        group = self.group
        while self.queued:
            queued, self.queued = self.queued, defaultdict(list)
            for partition, entries in queued.items():
                ref = current(partition)
                if ref is None:
                    self._parked.extend((partition, entry) for entry in entries)
                    continue
                if here is None:
                    self._send(partition, entries, ref)
                    continue
                ops = [entries[0][2]] if len(entries) == 1 else [entry[2] for entry in entries]
                try:
                    results = dispatch.run_now(ref, here, StoreServer.apply_batch, ops)
                except Exception as error:  # it crashed on them; its supervisor restarts it
                    self.batch_failed((partition, entries), error, True)
                    continue
                if isinstance(results, list):
                    try:
                        if group is None:
                            self.done(entries, results)
                        else:
                            group.applied((partition, entries, results))  # its flush syncs
                    except Exception as error:
                        self._answer_failed(partition, entries, error)
                elif results is NOT_RUN:  # busy (mail waits before this batch) or stopping
                    self._send(partition, entries, ref)
                else:  # the table refused the writes (a StorageError): the ops fail
                    self.batch_failed((partition, entries), results, True)

    def _answer_failed(self, partition: int, entries: list[Entry], error: Exception) -> None:
        # A failing answer must not take the transport down: the batch's requests fail,
        # as they did when the StoreServer answered from its mailbox.
        logger.exception("answering a batch of partition %d failed", partition)
        self.batch_failed((partition, entries), error, True)

    def _send(self, partition: int, entries: list[Entry], ref: pykka.ActorRef[Any]) -> None:
        if not ref.is_alive():
            self._parked.extend((partition, entry) for entry in entries)
            return
        if self._dispatcher is None:
            self._dispatcher = dispatch.dispatcher_of(ref)
        batch = StoreBatch([entry[2] for entry in entries], self, (partition, entries))
        try:
            dispatch.tell(ref, batch)
        except pykka.ActorDeadError:
            self._parked.extend((partition, entry) for entry in entries)

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
