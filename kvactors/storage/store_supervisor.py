"""StoreSupervisor: one StoreServer per partition, restarted onto the same table.

The tables belong to the backend, which outlives every StoreServer and the
StoreSupervisor itself, so a restart hands the new StoreServer the table its
predecessor wrote to. The supervisor publishes the live StoreServer of every partition
in a `PartitionDirectory`, which request paths read without asking any actor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pykka

from kvactors.core.hashtree import PartitionTrees
from kvactors.runtime.dispatch import Dispatcher
from kvactors.runtime.supervision import ChildSpec, Restart, Strategy, Supervisor
from kvactors.storage.replica import DEFAULT_LIMITS, ReplicaLimits
from kvactors.storage.store_server import DEFAULT_TOMBSTONE_GRACE, StoreServer
from kvactors.storage.tables import StorageBackend

__all__ = ["PartitionDirectory", "StoreSupervisor"]


class PartitionDirectory:
    """The current StoreServer ref of each partition.

    Reads are a list index, safe under the GIL with no lock; writers (the
    StoreSupervisor) take the condition so that waiters wake on every change.
    """

    def __init__(self, partitions: int) -> None:
        self._refs: list[pykka.ActorRef[Any] | None] = [None] * partitions
        self._changed = threading.Condition()

    def __len__(self) -> int:
        return len(self._refs)

    def current(self, partition: int) -> pykka.ActorRef[Any] | None:
        return self._refs[partition]

    def publish(self, partition: int, ref: pykka.ActorRef[Any] | None) -> None:
        with self._changed:
            self._refs[partition] = ref
            self._changed.notify_all()

    def withdraw(self, partition: int, ref: pykka.ActorRef[Any]) -> None:
        """Unpublish `ref` unless a newer StoreServer has replaced it already."""
        with self._changed:
            if self._refs[partition] is ref:
                self._refs[partition] = None
                self._changed.notify_all()

    def wait_for_live(
        self, partition: int, stale: pykka.ActorRef[Any] | None, deadline: float
    ) -> pykka.ActorRef[Any] | None:
        """Wait until the partition has a live StoreServer other than `stale`."""

        def ready() -> bool:
            ref = self._refs[partition]
            return ref is not None and ref is not stale and ref.is_alive()

        with self._changed:
            self._changed.wait_for(ready, timeout=max(0.0, deadline - time.monotonic()))
            return self._refs[partition] if ready() else None


def _partition_id(partition: int) -> str:
    return f"partition-{partition}"


class StoreSupervisor(Supervisor):
    """Starts a StoreServer for each owned partition; restarts them one for one."""

    def __init__(
        self,
        backend: StorageBackend,
        directory: PartitionDirectory,
        partitions: Iterable[int],
        *,
        dispatcher: Dispatcher | None = None,
        node: str = "local",
        tombstone_grace: float = DEFAULT_TOMBSTONE_GRACE,
        sync: Callable[[], None] | None = None,
        trees: PartitionTrees | None = None,
        max_restarts: int = 10,
        max_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        limits: ReplicaLimits = DEFAULT_LIMITS,
    ) -> None:
        self._backend = backend
        self._limits = limits
        self._directory = directory
        self._dispatcher = dispatcher
        self._node = node
        self._tombstone_grace = tombstone_grace
        self._sync = sync
        self._trees = trees
        super().__init__(
            [self._spec(p) for p in sorted(set(partitions))],
            strategy=Strategy.ONE_FOR_ONE,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            name="store_supervisor",
            clock=clock,
        )

    def _spec(self, partition: int) -> ChildSpec:
        backend, dispatcher = self._backend, self._dispatcher
        node, grace, sync, trees = self._node, self._tombstone_grace, self._sync, self._trees
        limits = self._limits

        def start() -> pykka.ActorRef[Any]:
            # Ask the backend each time: it hands back the same table after a crash.
            table = backend.open_table(partition)
            return StoreServer.start(
                partition,
                table,
                dispatcher,
                node=node,
                tombstone_grace=grace,
                sync=sync,
                trees=trees,
                limits=limits,
            )

        return ChildSpec(_partition_id(partition), start, Restart.PERMANENT)

    def start_partition(self, partition: int) -> pykka.ActorRef[Any]:
        """Start serving a partition this node now owns."""
        return self.start_child(self._spec(partition))

    def stop_partition(self, partition: int, *, drop: bool = False) -> bool:
        """Stop serving a partition; with `drop`, also delete its table."""
        stopped = self.terminate_child(_partition_id(partition))
        if drop:
            self._backend.drop_table(partition)
        return stopped

    def on_child_started(self, child_id: str, ref: pykka.ActorRef[Any]) -> None:
        self._directory.publish(_partition_of_child(child_id), ref)

    def on_child_stopped(self, child_id: str, ref: pykka.ActorRef[Any]) -> None:
        self._directory.withdraw(_partition_of_child(child_id), ref)


def _partition_of_child(child_id: str) -> int:
    return int(child_id.removeprefix("partition-"))
