"""Stores for unit tests: records, filled memory backends, lmdb metadata written behind
a backend's back. (tests/unit is on the path, as for conftest.)"""

from __future__ import annotations

from pathlib import Path

import lmdb

from kvactors.core.clocks import HlcStamp
from kvactors.core.versions import EMPTY_STATE, blind_write
from kvactors.storage.memory import MemoryBackend
from kvactors.storage.records import encode_state


def record(value: bytes) -> bytes:
    """The record of a key written once, blind, with `value`."""
    return encode_state(blind_write(EMPTY_STATE.obsolete, "a", value, HlcStamp(1_000, 0, "a"), 1))


def filled_backend(keys_per_partition: dict[int, int]) -> MemoryBackend:
    """A memory backend with `count` keys `k{partition}-{i:03}` in each partition."""
    backend = MemoryBackend()
    for partition, count in keys_per_partition.items():
        writes = [(f"k{partition}-{i:03}".encode(), record(b"v%d" % i)) for i in range(count)]
        backend.open_table(partition).apply(writes)
    return backend


def put_meta(path: Path, key: bytes, value: bytes) -> None:
    """Write into an lmdb backend's metadata database behind the backend's back."""
    env = lmdb.open(str(path), max_dbs=8)
    try:
        meta = env.open_db(b"meta")
        with env.begin(write=True, db=meta) as txn:
            txn.put(key, value)
    finally:
        env.close()
