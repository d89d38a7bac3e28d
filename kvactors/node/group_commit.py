"""Group commit: batches applied by the StoreServers wait for one storage sync, which
makes all of them durable at once, and only then are their results acted on.

The sync runs on a thread of its own, so that the next batches are applied while the
disk works; at most one sync runs at a time, the next taking every batch applied
meanwhile. Everything but the sync itself runs on the transport thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from kvactors.errors import StorageError
from kvactors.storage.tables import StorageBackend

__all__ = ["Applied", "GroupCommit"]

logger = logging.getLogger(__name__)

Applied = tuple[int, list[Any], list[Any]]
"""One applied batch: (partition, its queued entries, its results)."""


class GroupCommit:
    """Holds applied batches until one sync makes them durable; then `done(entries,
    results)` per batch, or `failed(partition, entries, error)` if the disk refused."""

    def __init__(
        self,
        storage: StorageBackend,
        sync: Callable[[], None],
        call_soon: Callable[[Callable[[], None]], object],
        done: Callable[[list[Any], list[Any]], None],
        failed: Callable[[int, list[Any], BaseException], None],
    ) -> None:
        self._storage = storage
        self._call_soon = call_soon
        self._done = done
        self._failed = failed
        self._unsynced: list[Applied] = []
        self._running = False
        self.syncs = 0
        self._syncer = _Syncer(sync, self._synced)

    def begin(self) -> int:
        """Start a group of batches (one storage transaction); returns its mark."""
        self._storage.begin_group()
        return len(self._unsynced)

    def end(self, mark: int) -> None:
        """Commit the group begun at `mark`; if that fails, none of its writes is stored."""
        try:
            self._storage.end_group()
        except StorageError as error:
            failed = self._unsynced[mark:]
            del self._unsynced[mark:]
            logger.error(
                "storage write failed, %d batches not acknowledged: %s", len(failed), error
            )
            for partition, entries, _ in failed:
                self._failed(partition, entries, error)

    def applied(self, batch: Applied) -> None:
        self._unsynced.append(batch)

    def flush(self) -> None:
        """Sync what was applied, unless a sync is running (the next takes it)."""
        if self._unsynced and not self._running:
            applied, self._unsynced = self._unsynced, []
            self._running = True
            self._syncer.sync(applied)

    def stop(self) -> None:
        self._syncer.stop()

    def _synced(self, applied: list[Applied], error: BaseException | None) -> None:
        """From the sync thread: `applied` is on disk (or failed to get there)."""

        def on_transport_thread() -> None:
            self._running = False
            if error is not None:  # a storage failure fails these requests, not the node
                logger.error(
                    "storage sync failed, %d batches unacknowledged: %s", len(applied), error
                )
                for partition, entries, _ in applied:
                    self._failed(partition, entries, error)
            else:
                self.syncs += 1
                for _, entries, results in applied:
                    self._done(entries, results)
            self.flush()  # what was applied while the disk worked

        self._call_soon(on_transport_thread)


class _Syncer:
    """A thread that runs one sync per piece of work and hands it back through
    `done(work, error)`; `stop()` ends and joins it. The thread starts with the first
    work: a node that never serves starts none."""

    def __init__(
        self, sync: Callable[[], None], done: Callable[[Any, BaseException | None], None]
    ) -> None:
        self._sync = sync
        self._done = done
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def sync(self, work: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="kvactors-group-commit", daemon=True
            )
            self._thread.start()
        self._work.put(work)

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._work.put(None)
            if thread is not threading.current_thread():
                thread.join(timeout=30.0)

    def _run(self) -> None:
        while (work := self._work.get()) is not None:
            try:
                self._sync()
            except Exception as error:  # handed back: the requests fail, the node serves
                self._done(work, error)
            else:
                self._done(work, None)
