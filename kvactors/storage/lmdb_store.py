"""The ``lmdb`` storage backend: one LMDB environment per node, in its data directory
(``data.mdb`` and ``lock.mdb``), holding named databases:

- ``p:<n>``: partition n's table, one per partition this node keeps;
- ``hints``: the hinted-handoff table (`open_hints`), whose entries carry the format
  of kvactors.replication.hints (HINT_FORMAT);
- ``meta``: the node's metadata: ``record_format`` (the RECORD_FORMAT of the code
  that created the environment), ``layout_format`` (this module's on-disk layout:
  database names and key encoding) and ``identity`` (the `NodeIdentity`), each
  msgpack-encoded.

LMDB keys are at most 511 bytes and never empty; a node accepts keys up to
``max_key_bytes`` (64 KiB). A key of 1 to 510 bytes is stored as itself; any other
(empty, or longer) is stored under a 511-byte key -- its first 479 bytes, zero-padded,
then its 32-byte blake2b digest -- with the full key in front of its record, so the
two forms never meet and `items` gives back the real keys.

The map (the largest the file may grow to) starts at `initial_map_size` and doubles
whenever a write finds it full, so a full map never reaches a caller. Resizing must
not overlap any transaction of the process, so every operation of the backend holds
one backend-wide lock (uncontended, it costs far less than the transaction).

Durability of the lmdb backend, by ``fsync`` policy (a *process* crash never loses a
committed write: it is in the OS page cache; these are about a *machine* crash):

``always`` (the default)
    Nothing is acknowledged before it is on disk. With ``group_commit`` (the default)
    each `Table.apply` commits without an fsync and the node calls `sync()` once per batch
    of work before it acknowledges any of it: one fsync covers every write of the batch,
    from every partition, instead of one each -- an fsync costs a disk round trip,
    whatever it carries. Threads that call `sync()` while another's fsync runs share the
    next one. Without ``group_commit`` every `apply` commits with LMDB's own synchronous
    commit (the baseline the benchmark compares against).
``interval``
    A background thread syncs every ``sync_interval_ms`` when something was written;
    `sync()` does nothing. A machine crash may lose the acknowledged writes of the last
    interval.
``never``
    Only `close()` syncs. A machine crash may lose anything written since the operating
    system last flushed the file on its own.

Every policy but ``always`` without group commit opens LMDB with its sync off, and LMDB
warns that a machine crash between two syncs may then, on a file system that does not
keep the order of writes, damage the environment, not only lose its last transactions.

`write_identity` always syncs at once, whatever the policy: a node must never come back
with an identity (incarnation) older than one it has already announced.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import lmdb
import msgpack

from kvactors.errors import ConfigError, StorageError
from kvactors.storage.records import RECORD_FORMAT
from kvactors.storage.tables import FSYNC_POLICIES, NodeIdentity, Write

__all__ = [
    "DEFAULT_MAP_SIZE",
    "IDENTITY_FORMAT",
    "LAYOUT_FORMAT",
    "LmdbBackend",
    "LmdbTable",
]

logger = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 64 * 1024 * 1024
"""The lmdb map a new backend starts with: 64 MiB. It is only address space until used
(on Linux the file grows with its data, not with the map), so it could be larger; 64 MiB
is enough that a small or test node never resizes, and a large one resizes only a dozen
times on its way to hundreds of GiB, since the map doubles."""

IDENTITY_FORMAT = 1
"""Format of the stored `NodeIdentity`: [format, cluster, name, incarnation, members,
partitions]."""

LAYOUT_FORMAT = 1
"""Format of the lmdb layout: database names and the key encoding described above."""

_META_DB = b"meta"
_HINTS_DB = b"hints"
_RECORD_FORMAT_KEY = b"record_format"
_LAYOUT_FORMAT_KEY = b"layout_format"
_IDENTITY_KEY = b"identity"
# Every named database other than the partitions'.
_FIXED_DATABASES = 2

# The key encoding: see the module docstring. Fixed, not taken from this LMDB build's
# limit, so that a directory reads the same under any build.
_STORED_KEY_BYTES = 511
_DIGEST_BYTES = 32
_PREFIX_BYTES = _STORED_KEY_BYTES - _DIGEST_BYTES
_KEY_LENGTH = struct.Struct(">I")

_T = TypeVar("_T")


class LmdbTable:
    """One named database of an `LmdbBackend`."""

    __slots__ = ("_backend", "_db", "_env", "_lock", "_name")

    def __init__(self, backend: LmdbBackend, db: Any, name: str) -> None:
        self._backend = backend
        self._env = backend._env
        self._lock = backend._lock
        self._db: Any = db  # None once dropped
        self._name = name

    def get(self, key: bytes) -> bytes | None:
        backend = self._backend
        group = backend._group_here()
        if group is not None:
            pending = group.get(self)
            if pending is not None and key in pending:
                return pending[key]  # written in this group, not committed yet
        stored = key if 0 < len(key) < _STORED_KEY_BYTES else _long_key(key)
        with self._lock:
            db = self._live_db()
            try:
                if group is not None:  # the group's one read transaction, see begin_group
                    value: bytes | None = backend._group_reader().get(stored, db=db)
                else:
                    with self._env.begin(db=db) as txn:
                        value = txn.get(stored)
            except lmdb.Error as error:
                raise backend._failure(f"reading from {self._name}", error) from None
        if value is None or stored is key:
            return value
        stored_key, record = _unwrap_long(value)
        if stored_key != key:
            raise StorageError(
                f"{self._name} in {self._backend.path}: two keys share one stored key "
                "(a blake2b collision)"
            )
        return record

    def apply(self, writes: Sequence[Write]) -> None:
        if not writes:
            return  # no transaction, so nothing for the next sync to do
        group = self._backend._group_here()
        if group is not None:  # committed with the rest of the group (`end_group`)
            group.setdefault(self, {}).update(writes)
            return
        with self._lock:
            db = self._live_db()
            self._backend._commit(f"writing to {self._name}", self._writer(writes), db)

    def _writer(self, writes: Iterable[Write]) -> Callable[[Any], None]:
        db = self._db

        def write(txn: Any) -> None:
            for key, value in writes:
                if 0 < len(key) < _STORED_KEY_BYTES:
                    if value is None:
                        txn.delete(key, db=db)
                    else:
                        txn.put(key, value, db=db)
                elif value is None:
                    txn.delete(_long_key(key), db=db)
                else:
                    txn.put(_long_key(key), _wrap_long(key, value), db=db)

        return write

    def __len__(self) -> int:
        if self._backend._group_touches(self):
            return sum(1 for _ in self.items())
        with self._lock:
            db = self._live_db()
            try:
                with self._env.begin(db=db) as txn:
                    entries: int = txn.stat(db)["entries"]
            except lmdb.Error as error:
                raise self._backend._failure(f"counting {self._name}", error) from None
        return entries

    def size(self) -> int:
        with self._lock:
            db = self._live_db()
            try:
                with self._env.begin(db=db) as txn:
                    stat = txn.stat(db)
            except lmdb.Error as error:
                raise self._backend._failure(f"measuring {self._name}", error) from None
        pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return int(pages * stat["psize"])

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        with self._lock:
            db = self._live_db()
            try:
                with self._env.begin(db=db) as txn:
                    snapshot = [
                        _unwrap_long(value) if len(key) == _STORED_KEY_BYTES else (key, value)
                        for key, value in txn.cursor().iternext()
                    ]
            except lmdb.Error as error:
                raise self._backend._failure(f"reading {self._name}", error) from None
        group = self._backend._group_here()
        pending = None if group is None else group.get(self)
        if pending:  # this group's writes, not committed yet, over the committed data
            merged = dict(snapshot)
            for key, value in pending.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            snapshot = list(merged.items())
        return iter(snapshot)

    def _live_db(self) -> Any:
        """The database handle; the caller holds the backend's lock."""
        if self._db is None:
            raise StorageError(f"{self._name} in {self._backend.path} was dropped")
        return self._db

    def _forget(self) -> Any:
        """Mark the table dropped; returns its handle. The caller holds the lock."""
        db, self._db = self._db, None
        return db


class LmdbBackend:
    """A node's tables in one LMDB environment: see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: str = "always",
        sync_interval_ms: int = 100,
        group_commit: bool = True,
        initial_map_size: int = DEFAULT_MAP_SIZE,
        max_tables: int = 4096,
    ) -> None:
        _check_options(fsync, sync_interval_ms, initial_map_size, max_tables)
        self.path = os.fspath(path)
        # LMDB's own synchronous commit only for the baseline; otherwise we decide when.
        self._sync_each_commit = fsync == "always" and not group_commit
        self._sync_on_request = fsync == "always" and group_commit
        # Guards every transaction and the map size; `_sync_lock` (taken first when both
        # are) serialises syncs, which run outside `_lock` so that tables keep working
        # during an fsync (LMDB allows a sync beside transactions).
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._commits = 0  # write transactions committed, only under `_lock`
        self._synced = 0  # `_commits` as of the last sync, only under `_sync_lock`
        self._fsyncs = 0
        self._map_resizes = 0
        self._closed = False
        # Writes of the open group (`begin_group`), per table, not committed yet, and the
        # thread whose writes it holds (any other thread's writes commit on their own).
        self._group: dict[LmdbTable, dict[bytes, bytes | None]] | None = None
        self._group_thread = 0
        self._reader: Any = None  # the open group's read transaction
        self._owner_lock = _lock_directory(self.path)
        try:
            self._env = _open_environment(
                self.path, initial_map_size, max_tables + _FIXED_DATABASES, self._sync_each_commit
            )
        except BaseException:
            os.close(self._owner_lock)
            raise
        self._tables: dict[int, LmdbTable] = {}
        try:
            with self._lock:
                self._meta_db = self._commit(
                    "opening the metadata", lambda txn: _open_meta(self._env, txn)
                )
                hints_db = self._commit(
                    "opening the hints", lambda txn: self._env.open_db(_HINTS_DB, txn=txn)
                )
                self._hints = LmdbTable(self, hints_db, "the hints table")
            self._flush()
        except BaseException:
            self._env.close()
            os.close(self._owner_lock)
            raise
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if fsync == "interval":
            self._syncer = threading.Thread(
                target=self._sync_every,
                args=(sync_interval_ms / 1000.0,),
                name="kvactors-lmdb-sync",
                daemon=True,
            )
            self._syncer.start()

    def open_table(self, partition: int) -> LmdbTable:
        with self._lock:
            table = self._tables.get(partition)
            if table is None:
                name = b"p:%d" % partition
                db = self._commit(
                    f"opening partition {partition}'s table",
                    lambda txn: self._env.open_db(name, txn=txn),
                )
                table = self._tables[partition] = LmdbTable(
                    self, db, f"partition {partition}'s table"
                )
            return table

    def open_hints(self) -> LmdbTable:
        return self._hints

    def drop_table(self, partition: int) -> None:
        name = b"p:%d" % partition
        with self._lock:
            table = self._tables.pop(partition, None)
            known = None if table is None else table._forget()

            def drop(txn: Any) -> None:
                try:
                    db = (
                        known
                        if known is not None
                        else self._env.open_db(name, txn=txn, create=False)
                    )
                except lmdb.NotFoundError:
                    return  # never created: nothing to drop
                txn.drop(db, delete=True)

            self._commit(f"dropping partition {partition}'s table", drop)

    def sync(self) -> None:
        if self._sync_on_request:
            self._flush()

    def begin_group(self) -> None:
        """Hold the writes of every table from now until `end_group`, and commit them in
        one transaction then: one pass of the request loop writes many partitions, and
        one transaction rewrites each shared page once, where one per partition would copy
        it each time (and leave the fsync that many more pages to write). Only with group
        commit, from the one thread that applies the group's writes; reads through the
        tables see the group's writes."""
        if self._sync_on_request and self._group is None:
            self._group_thread = threading.get_ident()
            self._group = {}
            self._reader = None  # opened by the group's first read

    def end_group(self) -> None:
        """Commit the group's writes in one transaction (StorageError if that fails: then
        none of them is stored)."""
        group, self._group = self._group, None
        reader, self._reader = self._reader, None
        if reader is not None:
            with self._lock:
                reader.abort()
        if not group:
            return
        writers = [(table, table._writer(list(writes.items()))) for table, writes in group.items()]

        def write_all(txn: Any) -> None:
            for table, write in writers:
                table._live_db()
                write(txn)

        with self._lock:
            self._commit("writing a group of partitions", write_all)

    def _group_reader(self) -> Any:
        """One read transaction for all of a group's reads (a transaction per read costs
        more than the read): it sees what was committed when the group began, and the
        group's own writes are read from the group first. The caller holds `_lock`."""
        if self._reader is None:
            self._reader = self._env.begin(write=False)
        return self._reader

    def _group_here(self) -> dict[LmdbTable, dict[bytes, bytes | None]] | None:
        """The open group, if this thread is the one whose writes it holds."""
        group = self._group
        if group is None or threading.get_ident() != self._group_thread:
            return None
        return group

    def _group_touches(self, table: LmdbTable) -> bool:
        group = self._group_here()
        return group is not None and bool(group.get(table))

    @property
    def durable(self) -> bool:
        return True

    def stats(self) -> dict[str, int]:
        with self._lock:
            map_size = 0 if self._closed else int(self._env.info()["map_size"])
            return {
                "commits": self._commits,
                "fsyncs": self._fsyncs,
                "map_size": map_size,
                "map_resizes": self._map_resizes,
                "tables": len(self._tables),
            }

    def read_identity(self) -> NodeIdentity | None:
        raw = self._read_meta(_IDENTITY_KEY)
        return None if raw is None else self._decode_identity(raw)

    def write_identity(self, identity: NodeIdentity) -> None:
        raw = _encode_identity(identity)
        with self._lock:
            self._commit(
                "writing the node identity",
                lambda txn: txn.put(_IDENTITY_KEY, raw, db=self._meta_db),
            )
        self._flush()

    def check_compatible(self, cluster: str) -> None:
        for key, label, supported in (
            (_RECORD_FORMAT_KEY, "record format", RECORD_FORMAT),
            (_LAYOUT_FORMAT_KEY, "storage layout", LAYOUT_FORMAT),
        ):
            stored = self._read_format(key, label)
            if stored is not None and stored > supported:
                raise ConfigError(
                    f"data directory {self.path} was written by a newer kvactors: "
                    f"{label} {stored}, this version reads up to {supported}"
                )
            if stored is not None and stored != supported:  # no release wrote it
                raise StorageError(
                    f"data directory {self.path} has {label} {stored}, which this "
                    f"version does not read (it reads {label} {supported})"
                )
        identity = self.read_identity()
        if identity is not None and identity.cluster != cluster:
            raise ConfigError(
                f"data directory {self.path} belongs to cluster {identity.cluster!r}, "
                f"not {cluster!r}: give this node another data directory"
            )

    def close(self) -> None:
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        with self._sync_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._env.sync(True)
                self._fsyncs += 1
            except lmdb.Error as error:
                raise self._failure("syncing before closing", error) from None
            finally:
                self._env.close()
                os.close(self._owner_lock)  # releases the directory for the next node

    # -- inside ---------------------------------------------------------------------

    def _commit(self, what: str, work: Callable[[Any], _T], db: Any = None) -> _T:
        """Run `work` in a write transaction and commit it, growing the map until it
        fits. The caller holds `_lock`."""
        if self._closed:
            raise StorageError(f"{what} in {self.path}: the backend is closed")
        env = self._env
        while True:
            try:
                txn = env.begin(write=True, db=db)
            except lmdb.Error as error:
                raise self._failure(what, error) from None
            try:
                result = work(txn)
                txn.commit()
            except lmdb.MapFullError:
                txn.abort()
                self._grow_map()
                continue
            except lmdb.DbsFullError:
                txn.abort()
                raise StorageError(
                    f"{what} in {self.path}: more tables than max_tables allows"
                ) from None
            except lmdb.Error as error:
                txn.abort()
                raise self._failure(what, error) from None
            except BaseException:
                txn.abort()
                raise
            self._commits += 1
            if self._sync_each_commit:
                self._fsyncs += 1
            return result

    def _grow_map(self) -> None:
        """Double the map. The caller holds `_lock`, so no transaction is in use; a
        group's read transaction is closed first (the group opens another)."""
        if self._reader is not None:
            self._reader.abort()
            self._reader = None
        size = int(self._env.info()["map_size"]) * 2
        try:
            self._env.set_mapsize(size)
        except lmdb.Error as error:
            raise self._failure(f"growing the map to {size} bytes", error) from None
        self._map_resizes += 1

    def _flush(self) -> None:
        """Make every commit counted so far durable: one fsync, unless another thread's
        fsync, begun after those commits, already did."""
        if self._sync_each_commit:
            return  # every commit synced itself
        # Every apply that returned before this call has counted its commit.
        wanted = self._commits
        with self._sync_lock:
            if self._synced >= wanted or self._closed:
                return  # the sync we waited behind covered our commits
            # Cover everything committed up to now, for the threads queued behind us.
            target = self._commits
            try:
                self._env.sync(True)
            except lmdb.Error as error:
                raise self._failure("syncing", error) from None
            self._synced = target
            self._fsyncs += 1

    def _sync_every(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self._flush()
            except StorageError:
                # Keep trying: the next interval may succeed (a disk freed up).
                logger.exception("background sync of %s failed", self.path)

    def _read_meta(self, key: bytes) -> bytes | None:
        with self._lock:
            if self._closed:
                raise StorageError(f"reading the metadata in {self.path}: the backend is closed")
            try:
                with self._env.begin(db=self._meta_db) as txn:
                    value: bytes | None = txn.get(key)
            except lmdb.Error as error:
                raise self._failure("reading the metadata", error) from None
        return value

    def _read_format(self, key: bytes, label: str) -> int | None:
        raw = self._read_meta(key)
        if raw is None:
            return None
        try:
            stored = msgpack.unpackb(raw)
        except (ValueError, msgpack.UnpackException):
            stored = raw
        if type(stored) is not int:
            raise StorageError(f"{self.path}: the stored {label} is corrupt: {stored!r}")
        return stored

    def _decode_identity(self, raw: bytes) -> NodeIdentity:
        try:
            fields = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as error:
            raise StorageError(
                f"{self.path}: the stored node identity is corrupt: {error}"
            ) from None
        if isinstance(fields, list) and fields and type(fields[0]) is int:
            if fields[0] > IDENTITY_FORMAT:
                raise ConfigError(
                    f"data directory {self.path} was written by a newer kvactors: "
                    f"node identity format {fields[0]}, this version reads up to "
                    f"{IDENTITY_FORMAT}"
                )
            if fields[0] != IDENTITY_FORMAT:  # no release wrote it
                raise StorageError(
                    f"{self.path}: the stored node identity has format {fields[0]}, which "
                    f"this version does not read (it reads format {IDENTITY_FORMAT})"
                )
            identity = _identity_from_fields(fields)
            if identity is not None:
                return identity
        raise StorageError(f"{self.path}: the stored node identity is corrupt: {fields!r}")

    def _failure(self, what: str, error: lmdb.Error) -> StorageError:
        return StorageError(f"{what} in {self.path} failed: {error}")


def _check_options(fsync: str, sync_interval_ms: int, map_size: int, max_tables: int) -> None:
    if fsync not in FSYNC_POLICIES:
        raise ConfigError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
    if sync_interval_ms <= 0:
        raise ConfigError(f"sync_interval_ms must be positive, got {sync_interval_ms}")
    if map_size <= 0:
        raise ConfigError(f"initial_map_size must be positive, got {map_size}")
    if max_tables <= 0:
        raise ConfigError(f"max_tables must be positive, got {max_tables}")


def _lock_directory(path: str) -> int:
    """Hold the data directory for this process: LMDB itself lets several processes share
    an environment, but two nodes writing the same data would make a mess of each other's
    versions. The lock dies with the process, so a crashed node never leaves it behind."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise StorageError(f"cannot open the data directory {path}: it is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        descriptor = os.open(os.path.join(path, "kvactors.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise StorageError(f"cannot open the data directory {path}: {error}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise StorageError(
            f"the data directory {path} is in use by another process (a node already runs on it)"
        ) from None
    return descriptor


def _open_environment(path: str, map_size: int, max_dbs: int, sync: bool) -> Any:
    if os.path.exists(path) and not os.path.isdir(path):
        raise StorageError(f"cannot open the data directory {path}: it is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        env = lmdb.open(
            path,
            map_size=map_size,
            subdir=True,
            max_dbs=max_dbs,
            lock=True,
            sync=sync,
            # Reads are random: reading ahead only evicts pages once data outgrows memory.
            readahead=False,
            # Reuse the read transaction (all reads hold the backend's lock, so one is
            # enough): a new one allocates per possible database, which with thousands of
            # tables makes a get several times dearer (docs/benchmarks.md).
            max_spare_txns=1,
        )
    except (OSError, lmdb.Error) as error:
        raise StorageError(f"cannot open the data directory {path}: {error}") from None
    if env.max_key_size() < _STORED_KEY_BYTES:
        env.close()
        raise StorageError(
            f"cannot open the data directory {path}: this LMDB build takes keys of at most "
            f"{env.max_key_size()} bytes, and kvactors needs {_STORED_KEY_BYTES}"
        )
    return env


def _open_meta(env: Any, txn: Any) -> Any:
    """Open (creating if new) the metadata database; a new one records the formats."""
    meta_db = env.open_db(_META_DB, txn=txn)
    for key, value in ((_RECORD_FORMAT_KEY, RECORD_FORMAT), (_LAYOUT_FORMAT_KEY, LAYOUT_FORMAT)):
        txn.put(key, msgpack.packb(value), db=meta_db, overwrite=False)
    return meta_db


def _long_key(key: bytes) -> bytes:
    """The stored key of a key LMDB cannot take as itself (empty, or 511 bytes or more)."""
    digest = hashlib.blake2b(key, digest_size=_DIGEST_BYTES).digest()
    return key[:_PREFIX_BYTES].ljust(_PREFIX_BYTES, b"\0") + digest


def _wrap_long(key: bytes, record: bytes) -> bytes:
    return _KEY_LENGTH.pack(len(key)) + key + record


def _unwrap_long(value: bytes) -> tuple[bytes, bytes]:
    (length,) = _KEY_LENGTH.unpack_from(value)
    start = _KEY_LENGTH.size
    return value[start : start + length], value[start + length :]


def _encode_identity(identity: NodeIdentity) -> bytes:
    fields = [
        IDENTITY_FORMAT,
        identity.cluster,
        identity.name,
        identity.incarnation,
        [list(member) for member in identity.members],
        list(identity.partitions),
    ]
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def _identity_from_fields(fields: list[Any]) -> NodeIdentity | None:
    """The identity stored as `fields` (format IDENTITY_FORMAT), or None if malformed."""
    if len(fields) != 6 or fields[0] != IDENTITY_FORMAT:
        return None
    _, cluster, name, incarnation, members, partitions = fields
    if not (
        type(cluster) is str
        and type(name) is str
        and type(incarnation) is int
        and isinstance(members, list)
        and all(
            isinstance(m, list) and len(m) == 2 and all(type(part) is str for part in m)
            for m in members
        )
        and isinstance(partitions, list)
        and all(type(p) is int for p in partitions)
    ):
        return None
    return NodeIdentity(
        cluster=cluster,
        name=name,
        incarnation=incarnation,
        members=tuple((m[0], m[1]) for m in members),
        partitions=tuple(partitions),
    )
