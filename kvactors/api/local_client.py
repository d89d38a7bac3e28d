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
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import pykka

from kvactors.api.rpc import STORE
from kvactors.codec import Key, decode_value, encode_value, normalize_key
from kvactors.distribution.hashing import partition_of
from kvactors.errors import InternalError, KVActorsError, RequestTimeoutError, UnavailableError
from kvactors.services import NodeServices
from kvactors.storage.store_server import Delete, Get, GetMany, Put, PutMany

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

    def __init__(self, services: NodeServices) -> None:
        config = services.config
        self._directory = services.directory
        self._ring = services.ring
        self._network = services.network
        self._partitions = len(self._directory)
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
        if self._ring.current.route[partition] is None:  # this node owns it: ask here
            return self._await(
                partition, message, *self._send(partition, message, deadline), deadline
            )
        return self._call_all({partition: message}, deadline)[partition]

    def _call_all(self, messages: Mapping[int, object], deadline: float) -> dict[int, Any]:
        """Local partitions are asked here; the others' owners get one RPC each."""
        route = self._ring.current.route
        local = {p: m for p, m in messages.items() if route[p] is None}
        remote: defaultdict[str, list[int]] = defaultdict(list)
        for partition in messages:
            owner = route[partition]
            if owner is not None:
                remote[owner].append(partition)
        calls = {
            owner: self._network.call(
                owner,
                STORE,
                {"ops": [op for p in partitions for op in _wire_ops(messages[p])]},
                max(0.001, deadline - time.monotonic()),
            )
            for owner, partitions in remote.items()
        }
        sent = {p: self._send(p, m, deadline) for p, m in local.items()}
        replies = {p: self._await(p, local[p], *sent[p], deadline) for p in local}
        for owner, future in calls.items():
            replies.update(_remote_replies(owner, future, remote[owner], messages, deadline))
        return replies

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


def _wire_ops(message: object) -> list[list[Any]]:
    """A StoreServer message as the ops of a `store` RPC."""
    match message:
        case Get(key):
            return [["get", key]]
        case Put(key, value):
            return [["put", key, value]]
        case Delete(key):
            return [["delete", key]]
        case GetMany(keys):
            return [["get", key] for key in keys]
        case PutMany(items):
            return [["put", key, value] for key, value in items]
    raise TypeError(f"no wire form for {message!r}")


def _remote_replies(
    owner: str,
    future: Future[Any],
    partitions: list[int],
    messages: Mapping[int, object],
    deadline: float,
) -> dict[int, Any]:
    """Split one `store` RPC's results back into each partition's reply."""
    try:
        results = future.result(timeout=max(0.0, deadline - time.monotonic()))["results"]
    except FutureTimeout:
        raise RequestTimeoutError(f"the owner {owner} did not answer in time") from None
    except KVActorsError:
        raise
    except Exception as exc:
        raise InternalError(f"the owner {owner} failed: {exc!r}") from exc
    replies: dict[int, Any] = {}
    position = 0
    for partition in partitions:
        message = messages[partition]
        count = len(_wire_ops(message))
        chunk = results[position : position + count]
        position += count
        if isinstance(message, Get | Delete):
            replies[partition] = chunk[0]
        elif isinstance(message, GetMany):
            replies[partition] = chunk
        else:
            replies[partition] = None
    return replies
