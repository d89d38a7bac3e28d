"""StoreServer and StoreSupervisor with real actors: one server per partition, same table
after a restart, partitions started and stopped at run time; the StoreServer's own part
(its hash tree, its sinks, a refused write). What the operations mean is tested without
actors in tests/unit/test_replica.py."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pykka
import pytest

from kvactors.core.clocks import HlcStamp
from kvactors.core.hashtree import PartitionTrees, new_partition_tree, record_digest
from kvactors.core.ops import (
    Delete,
    Get,
    GetMany,
    MergeKey,
    MergeMany,
    Put,
    PutMany,
    ReadKey,
    StoreOp,
)
from kvactors.core.versions import EMPTY_STATE, KeyState, coordinate_write
from kvactors.errors import StorageError
from kvactors.runtime.supervision import ChildExited, start_supervised
from kvactors.storage.memory import MemoryBackend, MemoryTable
from kvactors.storage.records import decode_state, encode_state
from kvactors.storage.store_server import CrashNow, StoreBatch, StoreServer
from kvactors.storage.store_supervisor import PartitionDirectory, StoreSupervisor
from kvactors.storage.tables import Write
from kvactors.testing import FakeClock, wait_until

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


# ------------------------------------------------------------------ the StoreServer shell


class RecordingSink:
    """A `BatchSink` that hands each outcome to the test thread."""

    def __init__(self) -> None:
        self.outcomes: queue.Queue[tuple[str, Any, Any]] = queue.Queue()

    def batch_done(self, token: Any, results: list[Any]) -> None:
        self.outcomes.put(("done", token, results))

    def batch_failed(self, token: Any, error: BaseException, handled: bool) -> None:
        self.outcomes.put(("failed", token, (error, handled)))

    def next(self) -> tuple[str, Any, Any]:
        return self.outcomes.get(timeout=5)


class RefusingTable(MemoryTable):
    """A MemoryTable whose writes fail while `full` is set, as a full disk's would."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False

    def apply(self, writes: Sequence[Write]) -> None:
        if self.full:
            raise StorageError("no space left on device")
        super().apply(writes)


def written_elsewhere(value: bytes) -> KeyState:
    """A version written through another replica, concurrent with any local one."""
    return coordinate_write(EMPTY_STATE, "peer", EMPTY_STATE.context, value, HlcStamp(1, 0, "peer"))


def table_tree(table: MemoryTable) -> int:
    """The root of a partition tree built afresh from the table's records."""
    tree = new_partition_tree()
    for key, record in table.items():
        tree.update(key, record_digest(record))
    return tree.root()


def test_a_store_server_keeps_its_published_tree_equal_to_its_table() -> None:
    table, trees, clock = MemoryTable(), PartitionTrees(PARTITIONS), FakeClock(1e9)
    table.apply([(b"before", encode_state(written_elsewhere(b"v")))])
    ref = start_supervised(
        lambda: StoreServer.start(3, table, wall_clock=clock, tombstone_grace=60, trees=trees),
        lambda _: None,
    )
    tree = trees.get(3)
    assert tree is not None and tree.root() == table_tree(table)  # built on start

    sink = RecordingSink()
    ops: list[StoreOp] = [
        Put(b"a", b"1"),
        Delete(b"before"),
        MergeKey(b"b", written_elsewhere(b"2")),
    ]
    ref.tell(StoreBatch(ops, sink, "writes"))
    assert sink.next() == ("done", "writes", [None, True, None])
    assert len(table) == 3 and tree.root() == table_tree(table)

    clock.advance(60)  # the tombstone is old enough: the next read forgets the key
    ref.tell(StoreBatch([ReadKey(b"before")], sink, "purge"))
    assert sink.next() == ("done", "purge", [EMPTY_STATE])
    assert table.get(b"before") is None and tree.root() == table_tree(table)

    ref.stop()
    assert trees.get(3) is None  # withdrawn: anti-entropy must not compare a dead tree


def test_a_refused_write_fails_its_batch_and_the_store_server_keeps_serving() -> None:
    table = RefusingTable()
    ref = start_supervised(lambda: StoreServer.start(0, table), lambda _: None)
    ref.ask(Put(b"k", b"v1"))
    sink = RecordingSink()
    table.full = True
    ref.tell(StoreBatch([Put(b"k", b"v2")], sink, "refused"))
    outcome, token, (error, handled) = sink.next()
    assert (outcome, token, handled) == ("failed", "refused", True)
    assert isinstance(error, StorageError)
    with pytest.raises(StorageError):
        ref.ask(Put(b"k", b"v3"))

    table.full = False
    ref.tell(StoreBatch([Get(b"k"), Put(b"k", b"v4"), Get(b"k")], sink, "later"))
    assert sink.next() == ("done", "later", [b"v1", None, b"v4"])
    ref.stop()
