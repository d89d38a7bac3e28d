"""The storage contract: a partition's `Table`, the `StorageBackend` that keeps a node's
tables, and the `NodeIdentity` a backend stores with them.

A backend owns the tables, not the StoreServers: `open_table(p)` returns the same table
for the same partition for the backend's whole life, so a StoreServer restarted after a
crash takes back the very table its predecessor wrote to (Erlang's ETS "heir"), and no
acknowledged write is lost.

Keys are bytes; each key's value is its record: its `KeyState` (its versions) in the
format of kvactors.storage.records. Records rather than live objects, even in memory: a
byte string is compact, and the garbage collector never has to walk it (a full
collection over a few hundred thousand live states would pause a node for most of a
second).

The backends: kvactors.storage.memory and kvactors.storage.lmdb_store;
kvactors.storage.backends opens the one a node's configuration names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["FSYNC_POLICIES", "NodeIdentity", "StorageBackend", "Table", "Write"]

Write = tuple[bytes, bytes | None]
"""One write of a batch: (key, record), where a record of None deletes the key."""

FSYNC_POLICIES = ("always", "interval", "never")


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who a node is, kept with its data so a restarted node comes back as itself."""

    cluster: str
    name: str
    incarnation: int
    members: tuple[tuple[str, str], ...]
    """(name, endpoint) of each member the node knew."""
    partitions: tuple[int, ...]
    """The partitions whose tables the node keeps."""


class Table(Protocol):
    """One partition's key-value table. Used by one thread at a time."""

    def get(self, key: bytes) -> bytes | None: ...

    def apply(self, writes: Sequence[Write]) -> None:
        """Apply a batch of writes in one transaction, in order."""
        ...

    def __len__(self) -> int: ...

    def size(self) -> int:
        """Bytes the table takes: exact for memory, LMDB's pages for lmdb."""
        ...

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """A snapshot: the caller may write to the table while it iterates."""
        ...


class StorageBackend(Protocol):
    """Creates and keeps the tables of one node."""

    def open_table(self, partition: int) -> Table: ...

    def open_hints(self) -> Table:
        """The hinted-handoff table; the same one for the backend's life."""
        ...

    def drop_table(self, partition: int) -> None: ...

    def sync(self) -> None:
        """Make every write applied so far durable (as the fsync policy promises)."""
        ...

    def begin_group(self) -> None:
        """From this thread, hold every table's writes until `end_group` (a backend
        without group commit may write at once)."""
        ...

    def end_group(self) -> None:
        """Commit what the group holds, in one transaction; StorageError if it fails."""
        ...

    @property
    def durable(self) -> bool:
        """Whether the tables outlive the process."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters: at least commits, fsyncs, map_size and map_resizes."""
        ...

    def read_identity(self) -> NodeIdentity | None: ...

    def write_identity(self, identity: NodeIdentity) -> None: ...

    def check_compatible(self, cluster: str) -> None:
        """Raise ConfigError when the stored data is not for this cluster and this code."""
        ...

    def close(self) -> None: ...
