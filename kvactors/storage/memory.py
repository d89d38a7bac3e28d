"""The ``memory`` storage backend: a dict per partition. Nothing survives the process."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from kvactors.errors import ConfigError
from kvactors.storage.tables import NodeIdentity, Write

__all__ = ["MemoryBackend", "MemoryTable"]


class MemoryTable:
    """A partition held in a dict: the seed's map."""

    __slots__ = ("_bytes", "_data")

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._bytes = 0  # of keys and records: kept as it changes, since status asks often

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def apply(self, writes: Sequence[Write]) -> None:
        data = self._data
        size = self._bytes
        for key, value in writes:
            old = data.pop(key, None) if value is None else data.get(key)
            if old is not None:
                size -= len(key) + len(old)
            if value is not None:
                data[key] = value
                size += len(key) + len(value)
        self._bytes = size

    def __len__(self) -> int:
        return len(self._data)

    def size(self) -> int:
        return self._bytes

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self._data.items()))


class MemoryBackend:
    """Tables in this process's memory; they live as long as the backend."""

    def __init__(self) -> None:
        self._tables: dict[int, MemoryTable] = {}
        self._hints = MemoryTable()
        self._identity: NodeIdentity | None = None
        self._lock = threading.Lock()

    def open_table(self, partition: int) -> MemoryTable:
        with self._lock:
            return self._tables.setdefault(partition, MemoryTable())

    def open_hints(self) -> MemoryTable:
        return self._hints

    def drop_table(self, partition: int) -> None:
        with self._lock:
            self._tables.pop(partition, None)

    def sync(self) -> None:
        """Nothing to do: memory is never durable."""

    def begin_group(self) -> None:
        """Nothing to do: every write is in place at once."""

    def end_group(self) -> None:
        """Nothing to do."""

    @property
    def durable(self) -> bool:
        return False

    def stats(self) -> dict[str, int]:
        # Counting would cost the hot path of a backend that has nothing to report.
        return {"commits": 0, "fsyncs": 0, "map_size": 0, "map_resizes": 0}

    def read_identity(self) -> NodeIdentity | None:
        return self._identity

    def write_identity(self, identity: NodeIdentity) -> None:
        self._identity = identity

    def check_compatible(self, cluster: str) -> None:
        identity = self._identity
        if identity is not None and identity.cluster != cluster:
            raise ConfigError(
                f"this memory backend belongs to cluster {identity.cluster!r}, not {cluster!r}"
            )

    def close(self) -> None:
        with self._lock:
            self._tables.clear()
            self._hints = MemoryTable()
