"""Hinted handoff: writes a replica missed reach it once it is back.

When a write cannot reach one of the replicas its key should have (the member is dead,
so the ring has put the next member in its place, or the replica did not answer), the
coordinator keeps a **hint**: "replica X lacks key K". The coordinator always holds the
key itself (only a replica coordinates a write), so a hint names the key and carries no
value: when X is alive again, `HintedHandoff` reads the key's current state here and
merges it into X, then forgets the hint. What is sent is the newest state, not the
missed write alone, so one hint covers any number of writes to its key.

Hints live in the storage backend's hints table (one entry per target and key), so they
survive a restart where the backend is durable. An entry is `HINT_FORMAT` (one byte), then
msgpack ``[partition, made_ms]``; one in another format stops the load with a
`StorageError` naming both formats (entries without the byte, from earlier releases, are
read as they were written). They are bounded: a hint older than
`max_age` seconds is dropped, and so is a new one that would take the table past
`max_bytes`; both are counted (`dropped`). Anti-entropy repairs whatever a dropped hint
would have.

Runs on the transport thread, from its tick, like anti-entropy; nothing waits.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from kvactors.core.ops import MergeKey, ReadKey
from kvactors.core.placement import RingHolder
from kvactors.core.versions import KeyState
from kvactors.errors import KVActorsError, StorageError
from kvactors.replication.channel import ReplicaChannel
from kvactors.storage.tables import Table

__all__ = ["HINT_FORMAT", "HintStats", "HintedHandoff"]

logger = logging.getLogger(__name__)

_SEPARATOR = b"\x00"  # member names are printable, so never hold a NUL

HINT_FORMAT = 1
"""The format byte in front of every entry of the hints table."""
_HINT_PREFIX = bytes((HINT_FORMAT,))
# What entries began with before they had a format byte: msgpack's array of 2.
_UNNUMBERED_HINT = 0x92


@dataclass(slots=True)
class HintStats:
    stored: int = 0
    delivered: int = 0
    dropped: int = 0
    """Hints dropped: too old, or over the size bound when they were made."""


@dataclass(slots=True)
class _Hint:
    partition: int
    made_ms: int
    size: int


class HintedHandoff:
    """The hints this node keeps, and their delivery."""

    def __init__(
        self,
        table: Table,
        ring: RingHolder,
        channel: ReplicaChannel,
        wall_clock: Callable[[], float],
        *,
        max_age: float,
        max_bytes: int,
        batch: int = 1000,
        interval: float = 0.5,
    ) -> None:
        self._table = table
        self._ring = ring
        self._channel = channel
        self._wall_clock = wall_clock
        self._max_age_ms = int(max_age * 1000)
        self._max_bytes = max_bytes
        self._batch = batch
        self._interval = interval
        self._next_at = 0.0
        self._delivering: set[str] = set()
        self._bytes = 0
        self._pending: defaultdict[str, dict[bytes, _Hint]] = defaultdict(dict)
        self.stats = HintStats()
        self._load()

    # -- keeping hints --------------------------------------------------------------------

    def add(self, target: str, partition: int, key: bytes) -> None:
        """Remember that `target` lacks `key` (this node holds it)."""
        hints = self._pending[target]
        old = hints.get(key)
        size = len(target) + len(key) + 16
        if old is None and self._bytes + size > self._max_bytes:
            self.stats.dropped += 1
            return
        made = int(self._wall_clock() * 1000)
        # A fresh hint even for a key hinted already: a delivery in flight read the key
        # before this write, and must not take the newer write's hint with it.
        hints[key] = _Hint(partition, made, size)
        if old is None:
            self._bytes += size
            self.stats.stored += 1
        entry = _HINT_PREFIX + msgpack.packb([partition, made])
        self._table.apply([(_table_key(target, key), entry)])

    def pending(self) -> dict[str, int]:
        """Hints waiting, per target."""
        return {target: len(hints) for target, hints in sorted(self._pending.items()) if hints}

    # -- delivering them ------------------------------------------------------------------

    def on_tick(self, now: float) -> None:
        if now < self._next_at:
            return
        self._next_at = now + self._interval
        self._drop_expired()
        snapshot = self._ring.current
        for target, hints in list(self._pending.items()):
            if not hints:
                del self._pending[target]
            elif target not in self._delivering and snapshot.endpoint_of(target) is not None:
                # An owning member again (alive, or suspect): hand its hints over.
                self._deliver(target, hints)

    def _deliver(self, target: str, hints: dict[bytes, _Hint]) -> None:
        batch = list(_first(hints, self._batch))
        self._delivering.add(target)
        delivery = _Delivery(self, target, len(batch))
        channel = self._channel
        for key, hint in batch:
            channel.send(channel.me, hint.partition, ReadKey(key), delivery, (False, key, hint))

    def _delivered(
        self, target: str, done: list[tuple[bytes, _Hint]], failed: KVActorsError | None
    ) -> None:
        self._delivering.discard(target)
        if failed is not None:
            logger.info(
                "hinted handoff to %s paused: %s (%d hints wait)",
                target,
                failed,
                len(self._pending[target]),
            )
        self.stats.delivered += self._forget(target, done)

    def _forget(self, target: str, done: list[tuple[bytes, _Hint]]) -> int:
        """Forget the hints in `done`, unless a newer write has replaced one meanwhile
        (or it expired, and was made again); returns how many were forgotten."""
        hints = self._pending[target]
        forgotten = [key for key, hint in done if hints.get(key) is hint]
        for key in forgotten:
            self._bytes -= hints.pop(key).size
        if forgotten:
            self._table.apply([(_table_key(target, key), None) for key in forgotten])
        return len(forgotten)

    def _drop_expired(self) -> None:
        oldest = int(self._wall_clock() * 1000) - self._max_age_ms
        for target, hints in self._pending.items():
            expired = [(key, hint) for key, hint in hints.items() if hint.made_ms < oldest]
            if expired:
                logger.warning(
                    "dropping %d hints for %s older than the hint age limit", len(expired), target
                )
                self.stats.dropped += self._forget(target, expired)

    def _load(self) -> None:
        """The hints a durable backend kept across a restart."""
        for stored_key, value in self._table.items():
            target, _, key = stored_key.partition(_SEPARATOR)
            partition, made = _read_entry(value)
            size = len(target) + len(key) + 16
            self._pending[target.decode()][key] = _Hint(partition, made, size)
            self._bytes += size


class _Delivery:
    """One batch of hints for one target: each key read here, then merged there."""

    def __init__(self, owner: HintedHandoff, target: str, count: int) -> None:
        self._owner = owner
        self._target = target
        self._waiting = count
        self._done: list[tuple[bytes, _Hint]] = []
        self._failed: KVActorsError | None = None

    def replica_done(self, tag: Any, result: Any) -> None:
        merged, key, hint = tag  # merged: the target's answer, else the local read's
        if merged:  # the target's answer to a merge
            self._done.append((key, hint))
            self._settled()
        elif isinstance(result, KeyState) and not result.is_empty:
            merge = MergeKey(key, result)
            self._owner._channel.send(self._target, hint.partition, merge, self, (True, key, hint))
        else:  # nothing here any more (purged): nothing to hand over
            self._done.append((key, hint))
            self._settled()

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        self._failed = error
        self._settled()

    def _settled(self) -> None:
        self._waiting -= 1
        if self._waiting == 0:
            self._owner._delivered(self._target, self._done, self._failed)


def _read_entry(value: bytes) -> tuple[int, int]:
    """(partition, made_ms) of a hints table entry; StorageError if of another format."""
    if value[:1] == _HINT_PREFIX:
        partition, made = msgpack.unpackb(value[1:])
    elif value[:1] == bytes((_UNNUMBERED_HINT,)):
        partition, made = msgpack.unpackb(value)
    else:
        found = value[0] if value else "none"
        raise StorageError(
            f"a hint entry of format {found}; this node reads hint format {HINT_FORMAT}"
        )
    return partition, made


def _table_key(target: str, key: bytes) -> bytes:
    return target.encode() + _SEPARATOR + key


def _first(hints: dict[bytes, _Hint], count: int) -> Iterator[tuple[bytes, _Hint]]:
    for index, item in enumerate(hints.items()):
        if index == count:
            return
        yield item
