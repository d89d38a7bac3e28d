"""StoreServer and StoreSupervisor with real actors: one server per partition, same table
after a restart, partitions started and stopped at run time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pykka
import pytest

from kvactors.core.clocks import HlcStamp
from kvactors.core.ops import Delete, Get, GetMany, MergeMany, Put, PutMany
from kvactors.core.versions import EMPTY_STATE, coordinate_write
from kvactors.runtime.supervision import ChildExited, start_supervised
from kvactors.storage.memory import MemoryBackend
from kvactors.storage.records import decode_state
from kvactors.storage.store_server import CrashNow
from kvactors.storage.store_supervisor import PartitionDirectory, StoreSupervisor
from kvactors.testing import wait_until

PARTITIONS = 8


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def directory() -> PartitionDirectory:
    return PartitionDirectory(PARTITIONS)


@pytest.fixture
def supervisor(
    backend: MemoryBackend, directory: PartitionDirectory
) -> Iterator[pykka.ActorProxy[StoreSupervisor]]:
    exits: list[ChildExited] = []
    ref = start_supervised(
        lambda: StoreSupervisor.start(backend, directory, range(0, PARTITIONS, 2)),
        exits.append,
    )
    yield ref.proxy()
    ref.stop()


def test_one_store_server_per_owned_partition(
    supervisor: pykka.ActorProxy[StoreSupervisor], directory: PartitionDirectory
) -> None:
    children = supervisor.which_children().get()
    assert [c.id for c in children] == [f"partition-{p}" for p in range(0, PARTITIONS, 2)]
    assert [p for p in range(PARTITIONS) if directory.current(p) is not None] == [0, 2, 4, 6]


def test_store_server_operations(
    supervisor: pykka.ActorProxy[StoreSupervisor], directory: PartitionDirectory
) -> None:
    ref = directory.current(2)
    assert ref is not None
    assert ref.ask(Get(b"k")) is None
    ref.ask(Put(b"k", b"v1"))
    ref.ask(PutMany(((b"a", b"1"), (b"k", b"v2"))))
    assert ref.ask(GetMany((b"k", b"a", b"zz"))) == [b"v2", b"1", None]
    assert ref.ask(Delete(b"k")) is True
    assert ref.ask(Delete(b"k")) is False


def test_merge_many_merges_each_key_as_merge_key_would(
    supervisor: pykka.ActorProxy[StoreSupervisor],
    directory: PartitionDirectory,
    backend: MemoryBackend,
) -> None:
    ref = directory.current(4)
    assert ref is not None
    ref.ask(Put(b"held", b"here"))
    # Written elsewhere, not knowing of the local write: concurrent with it.
    elsewhere = coordinate_write(
        EMPTY_STATE, "peer", EMPTY_STATE.context, b"there", HlcStamp(1, 0, "peer")
    )
    assert ref.ask(MergeMany([(b"held", elsewhere), (b"new", elsewhere)])) is None
    held = decode_state(backend.open_table(4).get(b"held") or b"")
    assert sorted(v.value for v in held.versions) == [b"here", b"there"]  # siblings
    assert decode_state(backend.open_table(4).get(b"new") or b"") == elsewhere
    # Merging the same states again changes nothing.
    before = dict(backend.open_table(4).items())
    ref.ask(MergeMany([(b"held", elsewhere), (b"new", elsewhere)]))
    assert dict(backend.open_table(4).items()) == before


def stored_value(backend: MemoryBackend, partition: int, key: bytes) -> bytes | None:
    """The winning value in the table's own entry for `key`."""
    record = backend.open_table(partition).get(key)
    winner = None if record is None else decode_state(record).winner
    return None if winner is None else winner.value


def test_restarted_server_takes_the_same_table(
    supervisor: pykka.ActorProxy[StoreSupervisor],
    directory: PartitionDirectory,
    backend: MemoryBackend,
) -> None:
    old = directory.current(4)
    assert old is not None
    old.ask(Put(b"key", b"value"))
    old.tell(CrashNow())
    new = directory.wait_for_live(4, old, deadline=time.monotonic() + 5)
    assert new is not None and new is not old
    assert new.ask(Get(b"key")) == b"value"
    assert supervisor.restart_count().get() == 1
    assert stored_value(backend, 4, b"key") == b"value"


def test_partitions_start_and_stop_at_run_time(
    supervisor: pykka.ActorProxy[StoreSupervisor],
    directory: PartitionDirectory,
    backend: MemoryBackend,
) -> None:
    ref = supervisor.start_partition(1).get()
    assert directory.current(1) is ref
    ref.ask(Put(b"k", b"v"))
    assert supervisor.stop_partition(1).get() is True
    assert directory.current(1) is None
    assert not ref.is_alive()
    assert stored_value(backend, 1, b"k") == b"v"  # kept: not dropped
    supervisor.stop_partition(1, drop=True).get()
    assert backend.open_table(1).get(b"k") is None
    assert supervisor.stop_partition(5).get() is False


def test_stopping_the_supervisor_withdraws_every_server(
    backend: MemoryBackend, directory: PartitionDirectory
) -> None:
    ref = start_supervised(
        lambda: StoreSupervisor.start(backend, directory, range(PARTITIONS)), lambda _: None
    )
    servers = [directory.current(p) for p in range(PARTITIONS)]
    ref.stop()
    assert all(directory.current(p) is None for p in range(PARTITIONS))
    wait_until(lambda: not any(s is not None and s.is_alive() for s in servers))
