"""LocalClient: `system.client`, get/put/delete on an embedded node from any thread.

The client finds a key's partition, reads the partition's live StoreServer from the
PartitionDirectory (no actor is asked) and asks it. Keys and values are validated and
encoded here, in the caller's thread, so bad input never reaches an actor.

A StoreServer may crash and be restarted while a request is on its way. A message the
dead StoreServer never handled is sent again to its successor; that is always safe,
because it was never applied.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import pykka

from kvactors.codec import Key, decode_value, encode_value, normalize_key
from kvactors.config import NodeConfig
from kvactors.distribution.hashing import partition_of
from kvactors.errors import InternalError, KVActorsError, RequestTimeoutError, UnavailableError
from kvactors.storage.store_server import Delete, Get, GetMany, Put, PutMany
from kvactors.storage.store_supervisor import PartitionDirectory

__all__ = ["LocalClient"]

K = TypeVar("K", bound=Key)

# How often a waiting caller checks that its StoreServer is still alive. Pykka can drop
# a message that arrives as an actor stops; this bounds how long such a loss goes unseen.
_LIVENESS_POLL = 0.2


class LocalClient:
    """get/put/delete against the node embedded in this process. Thread-safe.

    A missing key is not an error: `get` returns `default` (None unless given), and
    `get_many` leaves it out of its result.
    """

    def __init__(self, directory: PartitionDirectory, config: NodeConfig) -> None:
        self._directory = directory
        self._partitions = len(directory)
        self._max_key = config.max_key_bytes
        self._max_value = config.max_value_bytes
        self._timeout = config.request_timeout

    # -- single keys ------------------------------------------------------------------

    def get(self, key: Key, default: Any = None, *, timeout: float | None = None) -> Any:
        """The value stored under `key`, or `default` when there is none."""
        raw = normalize_key(key, self._max_key)
        encoded = self._call(self._partition(raw), Get(raw), self._deadline(timeout))
        return default if encoded is None else decode_value(encoded)

    def put(self, key: Key, value: Any, *, timeout: float | None = None) -> None:
        """Store `value` under `key`; returns once the store has it."""
        raw = normalize_key(key, self._max_key)
        message = Put(raw, encode_value(value, self._max_value))
        self._call(self._partition(raw), message, self._deadline(timeout))

    def delete(self, key: Key, *, timeout: float | None = None) -> bool:
        """Remove `key`; True if it was there."""
        raw = normalize_key(key, self._max_key)
        existed: bool = self._call(self._partition(raw), Delete(raw), self._deadline(timeout))
        return existed

    # -- batches: one message per partition, all partitions in parallel --------------

    def get_many(self, keys: Iterable[K], *, timeout: float | None = None) -> dict[K, Any]:
        """The found keys among `keys`, mapped to their values."""
        by_partition: defaultdict[int, list[tuple[K, bytes]]] = defaultdict(list)
        for key in keys:
            raw = normalize_key(key, self._max_key)
            by_partition[self._partition(raw)].append((key, raw))
        messages = {p: GetMany(tuple(raw for _, raw in pairs)) for p, pairs in by_partition.items()}
        replies = self._call_all(messages, self._deadline(timeout))
        found: dict[K, Any] = {}
        for partition, pairs in by_partition.items():
            for (key, _), encoded in zip(pairs, replies[partition], strict=True):
                if encoded is not None:
                    found[key] = decode_value(encoded)
        return found

    def put_many(
        self,
        items: Mapping[K, Any] | Iterable[tuple[K, Any]],
        *,
        timeout: float | None = None,
    ) -> None:
        """Store many pairs; each partition applies its share in one transaction."""
        pairs = items.items() if isinstance(items, Mapping) else items
        by_partition: defaultdict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for key, value in pairs:
            raw = normalize_key(key, self._max_key)
            by_partition[self._partition(raw)].append((raw, encode_value(value, self._max_value)))
        messages = {p: PutMany(tuple(writes)) for p, writes in by_partition.items()}
        self._call_all(messages, self._deadline(timeout))

    # -- delivery ---------------------------------------------------------------------

    def _partition(self, raw_key: bytes) -> int:
        return partition_of(raw_key, self._partitions)

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self._timeout if timeout is None else timeout)

    def _call(self, partition: int, message: object, deadline: float) -> Any:
        return self._await(partition, message, *self._send(partition, message, deadline), deadline)

    def _call_all(self, messages: Mapping[int, object], deadline: float) -> dict[int, Any]:
        sent = {p: self._send(p, m, deadline) for p, m in messages.items()}
        return {p: self._await(p, messages[p], *sent[p], deadline) for p in messages}

    def _send(
        self, partition: int, message: object, deadline: float
    ) -> tuple[pykka.ActorRef[Any], pykka.Future[Any]]:
        ref = self._directory.current(partition)
        if ref is None or not ref.is_alive():
            ref = self._directory.wait_for_live(partition, ref, deadline)
            if ref is None:
                raise UnavailableError(f"partition {partition} has no live StoreServer")
        return ref, ref.ask(message, block=False)

    def _await(
        self,
        partition: int,
        message: object,
        ref: pykka.ActorRef[Any],
        future: pykka.Future[Any],
        deadline: float,
    ) -> Any:
        while True:
            remaining = deadline - time.monotonic()
            try:
                return future.get(timeout=max(0.0, min(remaining, _LIVENESS_POLL)))
            except pykka.ActorDeadError:
                pass  # the StoreServer stopped before handling the message
            except pykka.Timeout:
                if ref.is_alive():
                    if remaining <= _LIVENESS_POLL:
                        raise RequestTimeoutError(
                            f"partition {partition} did not answer in time"
                        ) from None
                    continue
                # The reply is set before an actor stops, so a future still open once
                # the actor is gone was never handled. Look once more to be sure.
                try:
                    return future.get(timeout=0)
                except (pykka.Timeout, pykka.ActorDeadError):
                    pass
            except KVActorsError:
                raise
            except Exception as exc:
                raise InternalError(f"partition {partition} failed: {exc!r}") from exc
            ref, future = self._send(partition, message, deadline)
