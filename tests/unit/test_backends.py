"""Storage backends: each keeps a partition's table for its whole life; lmdb keeps it across
restarts and crashes, grows its map on its own and syncs by its fsync policy."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import msgpack
import pytest
from _stores import put_meta  # tests/unit is on the path, as for conftest
from hypothesis import given
from hypothesis import strategies as st

from kvactors.errors import ConfigError, StorageError
from kvactors.storage.backends import open_backend
from kvactors.storage.lmdb_store import IDENTITY_FORMAT, LmdbBackend
from kvactors.storage.memory import MemoryBackend
from kvactors.storage.records import RECORD_FORMAT
from kvactors.storage.tables import NodeIdentity, StorageBackend

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
KIB = 1024
MIB = 1024 * KIB
# Far above what any wait here takes, so a busy shared machine does not fail a test.
PATIENCE = 10.0

IDENTITY = NodeIdentity(
    cluster="blue",
    name="n1",
    incarnation=7,
    members=(("n1", "tcp://10.0.0.1:7001"), ("n2", "tcp://10.0.0.2:7001")),
    partitions=(0, 5, 9),
)

# Keys LMDB cannot store as themselves (empty, or over 510 bytes) beside ordinary ones.
AWKWARD_KEYS = [b"", b"a", b"k" * 510, b"k" * 511, b"k" * 512, b"k" * 64 * KIB, b"\0" * 600]


def wait_until(condition: Callable[[], T], what: str) -> T:
    """Poll `condition` until it is truthy; fail after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {PATIENCE}s: {what}")
        time.sleep(0.002)
    return result


@pytest.fixture(params=["memory", "lmdb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageBackend]:
    opened: StorageBackend = (
        MemoryBackend() if request.param == "memory" else LmdbBackend(tmp_path / "data")
    )
    yield opened
    opened.close()


def reopen(backend: LmdbBackend) -> LmdbBackend:
    backend.close()
    return LmdbBackend(backend.path)


# -- the contract, for every backend ----------------------------------------------------


def test_open_table_returns_the_same_table_each_time(backend: StorageBackend) -> None:
    table = backend.open_table(3)
    table.apply([(b"k", b"v")])
    assert backend.open_table(3) is table
    assert backend.open_table(3).get(b"k") == b"v"
    assert backend.open_table(4).get(b"k") is None


def test_apply_is_ordered_and_none_deletes(backend: StorageBackend) -> None:
    table = backend.open_table(0)
    table.apply([(b"a", b"1"), (b"b", b"2"), (b"a", None), (b"c", b"3"), (b"c", b"4")])
    assert sorted(table.items()) == [(b"b", b"2"), (b"c", b"4")]
    assert len(table) == 2
    table.apply([(b"missing", None)])
    assert len(table) == 2


def test_drop_table_forgets_its_data(backend: StorageBackend) -> None:
    backend.open_table(1).apply([(b"k", b"v")])
    backend.open_table(2).apply([(b"k", b"kept")])
    backend.drop_table(1)
    backend.drop_table(99)  # never opened: nothing to do
    assert backend.open_table(1).get(b"k") is None
    assert len(backend.open_table(1)) == 0
    assert backend.open_table(2).get(b"k") == b"kept"


def test_items_is_a_snapshot_the_caller_may_write_under(backend: StorageBackend) -> None:
    table = backend.open_table(0)
    table.apply([(b"k%d" % i, b"v") for i in range(50)])
    seen = 0
    for key, _ in table.items():
        table.apply([(key, None), (key + b"-new", b"w")])
        seen += 1
    assert seen == 50
    assert len(table) == 50
    assert all(key.endswith(b"-new") for key, _ in table.items())


def test_keys_of_any_length_round_trip(backend: StorageBackend) -> None:
    table = backend.open_table(0)
    table.apply([(key, b"value of %d" % len(key)) for key in AWKWARD_KEYS])
    for key in AWKWARD_KEYS:
        assert table.get(key) == b"value of %d" % len(key)
    assert table.get(b"k" * 513) is None  # shares a prefix with a stored long key
    assert sorted(table.items()) == sorted((k, b"value of %d" % len(k)) for k in AWKWARD_KEYS)
    assert len(table) == len(AWKWARD_KEYS)
    table.apply([(key, None) for key in AWKWARD_KEYS[::2]])
    assert sorted(k for k, _ in table.items()) == sorted(AWKWARD_KEYS[1::2])


def test_hints_are_one_table_apart_from_the_partitions(backend: StorageBackend) -> None:
    hints = backend.open_hints()
    hints.apply([(b"hint", b"h")])
    assert backend.open_hints() is hints
    assert backend.open_table(0).get(b"hint") is None
    assert list(hints.items()) == [(b"hint", b"h")]


def test_identity_round_trips_and_names_its_cluster(backend: StorageBackend) -> None:
    assert backend.read_identity() is None
    backend.check_compatible("anything")  # nothing stored yet: any cluster may take it
    backend.write_identity(IDENTITY)
    assert backend.read_identity() == IDENTITY
    backend.check_compatible("blue")
    with pytest.raises(ConfigError, match="belongs to cluster 'blue', not 'green'"):
        backend.check_compatible("green")


def test_stats_and_sync_are_there(backend: StorageBackend) -> None:
    backend.open_table(0).apply([(b"k", b"v")])
    backend.sync()
    assert {"commits", "fsyncs", "map_size", "map_resizes"} <= set(backend.stats())
    assert backend.durable is isinstance(backend, LmdbBackend)


# Hypothesis cannot take function-scoped fixtures: one environment for the module, a fresh
# partition per example.
_partitions = iter(range(10**6))


@pytest.fixture(scope="module")
def shared_lmdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LmdbBackend]:
    backend = LmdbBackend(tmp_path_factory.mktemp("shared"), initial_map_size=1 * MIB)
    yield backend
    backend.close()


KEYS = st.one_of(st.sampled_from(AWKWARD_KEYS[:5]), st.binary(max_size=8))
BATCHES = st.lists(
    st.lists(st.tuples(KEYS, st.one_of(st.none(), st.binary(max_size=64))), max_size=6),
    max_size=8,
)


@given(batches=BATCHES)
def test_lmdb_table_behaves_like_a_dict(
    shared_lmdb: LmdbBackend, batches: list[list[tuple[bytes, bytes | None]]]
) -> None:
    table = shared_lmdb.open_table(next(_partitions))
    model: dict[bytes, bytes] = {}
    for batch in batches:
        table.apply(batch)
        for key, value in batch:
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
        assert len(table) == len(model)
    assert dict(table.items()) == model
    for key in {key for batch in batches for key, _ in batch}:
        assert table.get(key) == model.get(key)


@given(batches=BATCHES)
def test_memory_table_keeps_its_size_as_it_changes(
    batches: list[list[tuple[bytes, bytes | None]]],
) -> None:
    # Counted on each write instead of over the table on each status call.
    table = MemoryBackend().open_table(0)
    for batch in batches:
        table.apply(batch)
        assert table.size() == sum(len(key) + len(record) for key, record in table.items())


# -- lmdb: durability and layout ---------------------------------------------------------


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path / "data")
    backend.open_table(0).apply([(key, b"v%d" % len(key)) for key in AWKWARD_KEYS])
    backend.open_table(7).apply([(b"gone", b"x")])
    backend.open_hints().apply([(b"hint", b"h")])
    backend.drop_table(7)
    backend = reopen(backend)
    try:
        assert sorted(backend.open_table(0).items()) == sorted(
            (key, b"v%d" % len(key)) for key in AWKWARD_KEYS
        )
        assert backend.open_table(7).get(b"gone") is None
        assert backend.open_hints().get(b"hint") == b"h"
    finally:
        backend.close()


def test_a_table_not_opened_since_reopen_can_be_dropped(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path)
    backend.open_table(4).apply([(b"k", b"v")])
    backend = reopen(backend)
    backend.drop_table(4)
    backend = reopen(backend)
    assert len(backend.open_table(4)) == 0
    backend.close()


def test_a_dropped_tables_old_object_refuses_to_be_used(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path)
    old = backend.open_table(1)
    old.apply([(b"k", b"v")])
    backend.drop_table(1)
    new = backend.open_table(1)
    assert new is not old
    for use in (lambda: old.get(b"k"), lambda: old.apply([(b"k", b"v")]), lambda: len(old)):
        with pytest.raises(StorageError, match=r"partition 1's table .* was dropped"):
            use()
    backend.close()


def test_the_map_grows_instead_of_filling(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path, initial_map_size=256 * KIB)
    table = backend.open_table(0)
    value = bytes(range(256)) * 40  # 10 KiB
    for batch in range(300):  # about 30 MB, some of it in 100 KiB transactions
        table.apply([(b"%d-%d" % (batch, i), value) for i in range(10)])
    stats = backend.stats()
    assert stats["map_resizes"] > 0
    assert stats["map_size"] >= 30 * MIB
    assert len(table) == 3000
    assert table.get(b"299-9") == value
    backend.close()


def test_the_map_grows_while_other_threads_use_other_tables(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path, initial_map_size=256 * KIB)
    errors: list[BaseException] = []

    def write(partition: int) -> None:
        try:
            table = backend.open_table(partition)
            for i in range(150):
                table.apply([(b"%d" % i, b"x" * 8 * KIB)])
                assert table.get(b"%d" % i) == b"x" * 8 * KIB
                backend.sync()
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=write, args=(p,)) for p in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert backend.stats()["map_resizes"] > 0
    assert [len(backend.open_table(p)) for p in range(4)] == [150] * 4
    backend.close()


def test_group_commit_is_one_fsync_for_many_applies(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path)
    tables = [backend.open_table(0), backend.open_table(1)]
    before = backend.stats()
    for i in range(20):
        tables[i % 2].apply([(b"k%d" % i, b"v")])
    assert backend.stats()["fsyncs"] == before["fsyncs"]
    backend.sync()
    after = backend.stats()
    assert after["commits"] - before["commits"] == 20
    assert after["fsyncs"] - before["fsyncs"] == 1
    backend.sync()  # nothing new to sync
    assert backend.stats()["fsyncs"] == after["fsyncs"]
    backend.close()


def test_without_group_commit_each_apply_fsyncs(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path, group_commit=False)
    table = backend.open_table(0)
    before = backend.stats()["fsyncs"]
    for i in range(5):
        table.apply([(b"k%d" % i, b"v")])
        assert backend.stats()["fsyncs"] - before == i + 1
    backend.sync()
    assert backend.stats()["fsyncs"] - before == 5
    backend.close()


def test_interval_policy_syncs_on_its_own(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path, fsync="interval", sync_interval_ms=5)
    table = backend.open_table(0)
    for round_ in range(3):
        before = backend.stats()["fsyncs"]
        table.apply([(b"k%d" % round_, b"v")])
        wait_until(lambda: backend.stats()["fsyncs"] > before, "a background sync")  # noqa: B023
    backend.close()


def test_interval_policy_sync_does_nothing_itself(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path, fsync="interval", sync_interval_ms=3_600_000)
    before = backend.stats()["fsyncs"]
    backend.open_table(0).apply([(b"k", b"v")])
    backend.sync()
    assert backend.stats()["fsyncs"] == before
    backend.close()


def test_never_policy_syncs_only_on_close(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path, fsync="never")
    before = backend.stats()["fsyncs"]
    table = backend.open_table(0)
    for i in range(5):
        table.apply([(b"k%d" % i, b"v")])
    backend.sync()
    assert backend.stats()["fsyncs"] == before
    backend.close()
    assert backend.stats()["fsyncs"] == before + 1
    backend = LmdbBackend(backend.path)
    assert len(backend.open_table(0)) == 5
    backend.close()


def test_identity_survives_reopen(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path, fsync="never")  # identity is synced whatever the policy
    before = backend.stats()["fsyncs"]
    backend.write_identity(IDENTITY)
    assert backend.stats()["fsyncs"] == before + 1
    backend = reopen(backend)
    assert backend.read_identity() == IDENTITY
    backend.write_identity(dataclasses.replace(IDENTITY, incarnation=8))
    backend = reopen(backend)
    identity = backend.read_identity()
    assert identity is not None
    assert identity.incarnation == 8
    backend.close()


def test_check_compatible_refuses_a_newer_record_format(tmp_path: Path) -> None:
    LmdbBackend(tmp_path).close()
    put_meta(tmp_path, b"record_format", msgpack.packb(RECORD_FORMAT + 1))
    backend = LmdbBackend(tmp_path)
    expected = (
        f"{tmp_path} was written by a newer kvactors: record format {RECORD_FORMAT + 1}, "
        f"this version reads up to {RECORD_FORMAT}"
    )
    with pytest.raises(ConfigError) as refused:
        backend.check_compatible("blue")
    assert expected in str(refused.value)
    backend.close()


def test_check_compatible_refuses_a_newer_identity_and_a_corrupt_one(tmp_path: Path) -> None:
    LmdbBackend(tmp_path).close()
    newer = [IDENTITY_FORMAT + 1, "blue", "n1", 1, [], [], "a field from the future"]
    put_meta(tmp_path, b"identity", msgpack.packb(newer))
    backend = LmdbBackend(tmp_path)
    with pytest.raises(ConfigError, match=f"node identity format {IDENTITY_FORMAT + 1}"):
        backend.check_compatible("blue")
    backend.close()
    put_meta(tmp_path, b"identity", msgpack.packb([IDENTITY_FORMAT, "blue", "n1"]))
    backend = LmdbBackend(tmp_path)
    with pytest.raises(StorageError, match="identity is corrupt"):
        backend.read_identity()
    backend.close()


def test_check_compatible_refuses_another_cluster_after_reopen(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path)
    backend.write_identity(IDENTITY)
    backend = reopen(backend)
    backend.check_compatible("blue")
    with pytest.raises(ConfigError) as refused:
        backend.check_compatible("green")
    assert str(tmp_path) in str(refused.value)
    assert "'blue'" in str(refused.value)
    backend.close()


def test_a_file_in_place_of_the_directory_fails_clearly(tmp_path: Path) -> None:
    file = tmp_path / "not-a-dir"
    file.write_text("hello")
    with pytest.raises(StorageError, match=f"{file}: it is not a directory"):
        LmdbBackend(file)
    with pytest.raises(StorageError, match=f"cannot open the data directory {file}/below"):
        LmdbBackend(file / "below")


def test_lmdb_failures_become_storage_errors(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path, max_tables=2)
    backend.open_table(0)
    backend.open_table(1)
    with pytest.raises(StorageError, match=r"opening partition 2's table .* max_tables"):
        backend.open_table(2)
    backend.drop_table(1)  # frees its place
    backend.open_table(2).apply([(b"k", b"v")])
    table = backend.open_table(0)
    backend.close()
    backend.close()  # twice is fine
    with pytest.raises(StorageError, match="closed"):
        table.apply([(b"k", b"v")])
    with pytest.raises(StorageError, match=str(tmp_path)):
        table.get(b"k")


def test_open_backend_names(tmp_path: Path) -> None:
    assert isinstance(open_backend("memory"), MemoryBackend)
    lmdb_backend = open_backend("lmdb", data_dir=str(tmp_path), fsync="never")
    assert isinstance(lmdb_backend, LmdbBackend)
    lmdb_backend.close()
    with pytest.raises(ConfigError, match="data directory"):
        open_backend("lmdb")
    with pytest.raises(ConfigError, match="fsync must be one of"):
        open_backend("lmdb", data_dir=str(tmp_path), fsync="sometimes")
    with pytest.raises(ConfigError):
        open_backend("floppy")


# -- lmdb: a crash loses no acknowledged write -------------------------------------------

# Writes batches of three keys, syncs, then prints them: a printed key is acknowledged.
CRASH_WRITER = """
import sys
from kvactors.storage.lmdb_store import LmdbBackend
backend = LmdbBackend(sys.argv[1], fsync="always", initial_map_size=256 * 1024)
tag = sys.argv[2]
table = backend.open_table(int(tag))
n = 0
while True:
    keys = [("%s-%d" % (tag, n + i)).encode() for i in range(3)]
    table.apply([(key, key * 50) for key in keys])
    backend.sync()
    print(" ".join(key.decode() for key in keys), flush=True)
    n += 3
"""


def _crash_cycles(path: Path, cycles: int, rng: random.Random) -> None:
    acknowledged: list[tuple[int, bytes]] = []
    for cycle in range(cycles):
        writer = subprocess.Popen(
            [sys.executable, "-c", CRASH_WRITER, str(path), str(cycle)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        lines = [writer.stdout.readline() for _ in range(rng.randint(1, 150))]
        writer.send_signal(signal.SIGKILL)
        rest, errors = writer.communicate(timeout=PATIENCE)
        assert writer.returncode == -signal.SIGKILL, errors
        # A line cut short by the kill was never whole, so never acknowledged.
        for line in [*lines, *rest.splitlines(keepends=True)]:
            if line.endswith("\n"):
                acknowledged.extend((cycle, key.encode()) for key in line.split())
        backend = LmdbBackend(path)
        try:
            missing = [
                key
                for partition, key in acknowledged
                if backend.open_table(partition).get(key) != key * 50
            ]
        finally:
            backend.close()
        assert missing == [], f"cycle {cycle}: acknowledged writes lost"
    assert len(acknowledged) >= 3 * cycles


def test_a_killed_writer_loses_no_acknowledged_write(tmp_path: Path) -> None:
    _crash_cycles(tmp_path / "data", 5, random.Random(os.getpid()))


@pytest.mark.slow
def test_a_killed_writer_loses_no_acknowledged_write_many_times(tmp_path: Path) -> None:
    _crash_cycles(tmp_path / "data", 60, random.Random(os.getpid()))


def test_a_data_directory_serves_one_backend_at_a_time(tmp_path: Path) -> None:
    """Two nodes on one directory would overwrite each other's versions: the second is
    refused, and the directory is free again once the first closes."""
    first = LmdbBackend(tmp_path / "data")
    with pytest.raises(StorageError, match="in use by another process"):
        LmdbBackend(tmp_path / "data")
    first.close()
    LmdbBackend(tmp_path / "data").close()


def test_a_group_commits_every_tables_writes_in_one_transaction(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path / "data")
    first, second = backend.open_table(1), backend.open_table(2)
    before = backend.stats()["commits"]
    backend.begin_group()
    first.apply([(b"a", b"1"), (b"b", b"2")])
    second.apply([(b"c", b"3")])
    first.apply([(b"b", None)])
    # This thread reads the group's writes before they are committed ...
    assert first.get(b"a") == b"1" and first.get(b"b") is None
    assert dict(first.items()) == {b"a": b"1"} and len(second) == 1
    assert backend.stats()["commits"] == before  # ... which they are not yet
    seen_elsewhere: list[bytes | None] = []
    reader = threading.Thread(target=lambda: seen_elsewhere.append(second.get(b"c")))
    reader.start()
    reader.join()
    assert seen_elsewhere == [None]  # another thread sees only committed data
    backend.end_group()
    assert backend.stats()["commits"] == before + 1
    backend.sync()
    backend.close()
    reopened = LmdbBackend(tmp_path / "data")
    assert dict(reopened.open_table(1).items()) == {b"a": b"1"}
    assert dict(reopened.open_table(2).items()) == {b"c": b"3"}
    reopened.close()


def test_another_threads_writes_during_a_group_commit_on_their_own(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path / "data")
    table = backend.open_table(1)
    backend.begin_group()
    writer = threading.Thread(target=lambda: table.apply([(b"other", b"x")]))
    writer.start()
    writer.join()
    assert backend.stats()["commits"] >= 1
    backend.end_group()  # holds nothing of the other thread's
    assert table.get(b"other") == b"x"
    backend.close()


def test_a_group_outgrows_a_tiny_map_without_an_error(tmp_path: Path) -> None:
    backend = LmdbBackend(tmp_path / "data", initial_map_size=256 * 1024)
    tables = [backend.open_table(p) for p in range(4)]
    backend.begin_group()
    for number in range(2_000):
        tables[number % 4].apply([(b"key-%d" % number, b"v" * 500)])
    backend.end_group()
    assert sum(len(table) for table in tables) == 2_000
    assert backend.stats()["map_resizes"] > 0
    backend.close()


def test_memory_groups_write_at_once() -> None:
    backend = MemoryBackend()
    table = backend.open_table(1)
    backend.begin_group()
    table.apply([(b"k", b"v")])
    assert table.get(b"k") == b"v"
    backend.end_group()
    assert table.get(b"k") == b"v"


def test_a_groups_reads_survive_the_map_growing_under_them(tmp_path: Path) -> None:
    """A group reads through one read transaction; another thread's write that grows the
    map closes it first, and the group's next read opens another."""
    backend = LmdbBackend(tmp_path / "data", initial_map_size=256 * 1024)
    mine, other = backend.open_table(1), backend.open_table(2)
    mine.apply([(b"before", b"1")])
    backend.begin_group()
    assert mine.get(b"before") == b"1"  # the group's read transaction is open now
    mine.apply([(b"in-group", b"2")])
    writer = threading.Thread(
        target=lambda: other.apply([(b"big-%d" % n, b"v" * 800) for n in range(1_000)])
    )
    writer.start()
    writer.join()
    assert backend.stats()["map_resizes"] > 0
    assert mine.get(b"before") == b"1" and mine.get(b"in-group") == b"2"
    backend.end_group()
    assert mine.get(b"in-group") == b"2" and len(other) == 1_000
    backend.close()
