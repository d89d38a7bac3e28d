"""Leave handoff: a leaving node streams its partitions to the members that take them over.

When a node starts leaving (`kvactors leave`), every ring leaves it out at once: its
replica slots pass to other members, which take new writes from then on. The leaver
still holds everything it stored, and hands it over before it goes: for each partition
it replicated, each member that gains the partition gets the leaver's copy (the pairs
`kvactors.core.handoff.leave_transfers` names), streamed in batches of `batch` keys (the
next batch leaves once the previous one is acknowledged: flow control), at most
`concurrency` transfers at a time. A batch that fails is sent again after `retry`
seconds, from where it stopped, and the log says why it waits. Only when every transfer
has finished does the node announce that it has left; so the data keeps N copies
throughout: the members that stay, plus the leaver until it is done.

Runs on the transport thread, from its tick; every step is a callback.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvactors.core.ops import MergeRecord
from kvactors.errors import KVActorsError
from kvactors.replication.channel import ReplicaChannel
from kvactors.storage.records import read_wire_state
from kvactors.storage.tables import StorageBackend

__all__ = ["LeaveHandoff"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Transfer:
    partition: int
    target: str
    items: list[tuple[bytes, bytes]] = field(default_factory=list)
    sent_keys: int = 0
    sent_bytes: int = 0
    batch_start: int = 0  # `sent_keys` when the batch in flight was sent
    started: float = 0.0
    waiting: int = 0  # merges of the batch in flight, not answered yet
    failed: KVActorsError | None = None
    retry_at: float = 0.0

    def report(self, now: float) -> dict[str, Any]:
        elapsed = max(now - self.started, 1e-3)
        rate = self.sent_keys / elapsed
        left = len(self.items) - self.sent_keys
        return {
            "partition": self.partition,
            "to": self.target,
            "keys_sent": self.sent_keys,
            "keys": len(self.items),
            "bytes_sent": self.sent_bytes,
            "keys_per_second": round(rate, 1),
            "eta_seconds": None if rate == 0 else round(left / rate, 1),
        }


class LeaveHandoff:
    """Hands a leaving node's partitions over; `finished` once every transfer is done."""

    def __init__(
        self,
        pairs: list[tuple[int, str]],
        storage: StorageBackend,
        channel: ReplicaChannel,
        *,
        concurrency: int,
        batch: int = 500,
        retry: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = deque(_Transfer(partition, target) for partition, target in pairs)
        self._storage = storage
        self._channel = channel
        self._concurrency = concurrency
        self._batch = batch
        self._retry = retry
        self._clock = clock
        self._running: list[_Transfer] = []
        self._starting = False
        self.total = len(pairs)
        self.done = 0
        self.keys_sent = 0
        self.bytes_sent = 0
        logger.info("leaving: %d partition transfers to hand over", self.total)

    @property
    def finished(self) -> bool:
        return not self._queue and not self._running

    def on_tick(self) -> None:
        self._start_queued()
        now = self._clock()
        for transfer in self._running:
            if transfer.failed is not None and transfer.waiting == 0 and now >= transfer.retry_at:
                transfer.failed = None
                self._send_batch(transfer)

    def status(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "transfers": self.total,
            "done": self.done,
            "waiting": len(self._queue),
            "keys_sent": self.keys_sent,
            "bytes_sent": self.bytes_sent,
            "running": [transfer.report(now) for transfer in self._running],
        }

    def _start_queued(self) -> None:
        """Start transfers while the concurrency allows: from the tick, and as soon as
        one finishes (most partitions are a batch or two, over well within a tick)."""
        if self._starting:
            return  # an empty partition finished at once, inside the loop below
        self._starting = True
        try:
            now = self._clock()
            while self._queue and len(self._running) < self._concurrency:
                transfer = self._queue.popleft()
                table = self._storage.open_table(transfer.partition)
                transfer.items = list(table.items())
                transfer.started = now
                self._running.append(transfer)
                self._send_batch(transfer)
        finally:
            self._starting = False

    def _send_batch(self, transfer: _Transfer) -> None:
        transfer.batch_start = transfer.sent_keys
        batch = transfer.items[transfer.sent_keys : transfer.sent_keys + self._batch]
        if not batch:
            self._finish(transfer)
            return
        transfer.waiting = len(batch)
        for key, record in batch:
            merge = MergeRecord(key, read_wire_state(record))  # its state as stored
            tag = (transfer, len(record))
            self._channel.send(transfer.target, transfer.partition, merge, self, tag)

    def _finish(self, transfer: _Transfer) -> None:
        self._running.remove(transfer)
        self.done += 1
        self._start_queued()
        if self.finished:
            logger.info(
                "leaving: every partition handed over (%d transfers, %d keys)",
                self.total,
                self.keys_sent,
            )

    # -- ReplicaTarget: the target's answers ------------------------------------------------

    def replica_done(self, tag: Any, result: Any) -> None:
        transfer, size = tag
        transfer.waiting -= 1
        if transfer.failed is None:
            transfer.sent_keys += 1
            transfer.sent_bytes += size
            self.keys_sent += 1
            self.bytes_sent += size
        self._batch_settled(transfer)

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        transfer, _ = tag
        transfer.waiting -= 1
        transfer.failed = error
        self._batch_settled(transfer)

    def _batch_settled(self, transfer: _Transfer) -> None:
        if transfer.waiting:
            return
        if transfer.failed is None:
            self._send_batch(transfer)
            return
        # Sent again from the batch's start: merges are idempotent.
        transfer.sent_keys = transfer.batch_start
        transfer.retry_at = self._clock() + self._retry
        logger.warning(
            "leaving: the transfer of partition %d to %s waits: %s",
            transfer.partition,
            transfer.target,
            transfer.failed,
        )
