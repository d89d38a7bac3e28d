"""Storage backends: where each partition's table lives (the contract is in
kvactors.storage.tables).

``memory`` (`kvactors.storage.memory.MemoryBackend`)
    A dict per partition. Nothing survives the process.

``lmdb`` (`kvactors.storage.lmdb_store.LmdbBackend`)
    One LMDB environment per node, in its data directory: a database per partition, the
    hints, the node's identity; group commit and an fsync policy.
"""

from __future__ import annotations

from kvactors.errors import ConfigError
from kvactors.storage.lmdb_store import LmdbBackend
from kvactors.storage.memory import MemoryBackend
from kvactors.storage.tables import StorageBackend

__all__ = ["open_backend"]


def open_backend(
    kind: str,
    *,
    data_dir: str | None = None,
    fsync: str = "always",
    sync_interval_ms: int = 100,
    group_commit: bool = True,
) -> StorageBackend:
    """The backend named by `NodeConfig.storage`."""
    if kind == "memory":
        return MemoryBackend()
    if kind == "lmdb":
        if data_dir is None:
            raise ConfigError("the lmdb storage backend needs a data directory (data_dir)")
        return LmdbBackend(
            data_dir, fsync=fsync, sync_interval_ms=sync_interval_ms, group_commit=group_commit
        )
    raise ConfigError(f"unknown storage backend {kind!r}")
