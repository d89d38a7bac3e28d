"""Storage backends: where each partition's table lives.

A backend owns the tables, not the StoreServers: `open_table(p)` returns the same table
for the same partition for the backend's whole life, so a StoreServer restarted after a
crash takes back the very table its predecessor wrote to (Erlang's ETS "heir"), and no
acknowledged write is lost.

Keys are bytes; each key's value is its record: its `KeyState` (its versions) in the
format of kvactors.storage.records. Records rather than live objects, even in memory: a
byte string is compact, and the garbage collector never has to walk it (a full
collection over a few hundred thousand live states would pause a node for most of a
second).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

from kvactors.errors import ConfigError

__all__ = ["MemoryBackend", "MemoryTable", "StorageBackend", "Table", "Write", "open_backend"]

Write = tuple[bytes, bytes | None]
"""One write of a batch: (key, record), where a record of None deletes the key."""


class Table(Protocol):
    """One partition's key-value table. Used by one StoreServer at a time."""

    def get(self, key: bytes) -> bytes | None: ...

    def apply(self, writes: Sequence[Write]) -> None:
        """Apply a batch of writes in one transaction, in order."""
        ...

    def __len__(self) -> int: ...

    def items(self) -> Iterator[tuple[bytes, bytes]]: ...


class StorageBackend(Protocol):
    """Creates and keeps the tables of one node."""

    def open_table(self, partition: int) -> Table: ...

    def drop_table(self, partition: int) -> None: ...

    def close(self) -> None: ...


class MemoryTable:
    """A partition held in a dict: the seed's map."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def apply(self, writes: Sequence[Write]) -> None:
        data = self._data
        for key, value in writes:
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self._data.items()))


class MemoryBackend:
    """Tables in this process's memory; they live as long as the backend."""

    def __init__(self) -> None:
        self._tables: dict[int, MemoryTable] = {}
        self._lock = threading.Lock()

    def open_table(self, partition: int) -> MemoryTable:
        with self._lock:
            return self._tables.setdefault(partition, MemoryTable())

    def drop_table(self, partition: int) -> None:
        with self._lock:
            self._tables.pop(partition, None)

    def close(self) -> None:
        with self._lock:
            self._tables.clear()


def open_backend(kind: str) -> StorageBackend:
    """The backend named by `NodeConfig.storage`."""
    if kind == "memory":
        return MemoryBackend()
    raise ConfigError(f"unknown storage backend {kind!r}")
