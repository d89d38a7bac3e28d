"""LocalClient: `system.client`, get/put/delete on an embedded node from any thread.

In a cluster, requests go to the node's quorum coordinator on its transport thread, like
network requests. While the node is alone (N=1, no peers), the client finds a key's
partition, reads the partition's live StoreServer from the PartitionDirectory (no actor is
asked) and asks it. Keys and values are validated and encoded here, in the caller's
thread, so bad input never reaches an actor.

A StoreServer may crash and be restarted while a request is on its way. A message the
dead StoreServer never handled is sent again to its successor; that is always safe,
because it was never applied.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import pykka

from kvactors.client.batches import batches_of
from kvactors.client.versioned import Versioned, VersionedWrites
from kvactors.codec import Key, decode_value, encode_value, normalize_key
from kvactors.core.clocks import VectorClock
from kvactors.core.context import client_context
from kvactors.core.hashing import partition_of
from kvactors.core.ops import Get, GetMany, PutMany, ReadKey, WriteKey, Written
from kvactors.core.versions import KeyState
from kvactors.errors import (
    InternalError,
    KVActorsError,
    RequestTimeoutError,
    UnavailableError,
)
from kvactors.net.protocol import Op, PutItem, Reply, Request, WireFormat
from kvactors.node.services import NodeServices, RequestGateway

__all__ = ["LocalClient"]

K = TypeVar("K", bound=Key)

# How often a waiting caller checks that its StoreServer is still alive. Pykka can drop
# a message that arrives as an actor stops; this bounds how long such a loss goes unseen.
_LIVENESS_POLL = 0.2


class LocalClient(VersionedWrites):
    """get/put/delete against the node embedded in this process. Thread-safe.

    A missing key is not an error: `get` returns `default` (None unless given), and
    `get_many` leaves it out of its result. While the node is alone (no peers, N=1) the
    client asks its StoreServers directly; in a cluster every request goes through the
    node's quorum coordinator, exactly as a network request does.
    """

    def __init__(self, services: NodeServices) -> None:
        config = services.config
        self._services = services
        self._directory = services.directory
        self._ring = services.ring
        self._partitions = len(self._directory)
        self._max_key = config.max_key_bytes
        self._max_value = config.max_value_bytes
        self._timeout = config.request_timeout

    # -- single keys ------------------------------------------------------------------

    def get(
        self, key: Key, default: Any = None, *, r: int | None = None, timeout: float | None = None
    ) -> Any:
        """The value stored under `key`, or `default` when there is none."""
        raw = normalize_key(key, self._max_key)
        gateway = self._gateway()
        if gateway is not None:
            reply = self._submit(gateway, Op.GET, timeout, key=raw, r=r)
            if reply.found and reply.value_bytes is not None:
                return decode_value(reply.value_bytes)
            return default
        encoded = self._call(self._partition(raw), Get(raw), self._deadline(timeout))
        return default if encoded is None else decode_value(encoded)

    def get_versioned(
        self, key: Key, *, r: int | None = None, timeout: float | None = None
    ) -> Versioned:
        """The key with every live sibling and the causal context for the next write."""
        raw = normalize_key(key, self._max_key)
        gateway = self._gateway()
        if gateway is not None:
            reply = self._submit(gateway, Op.GET, timeout, key=raw, r=r, siblings=True)
            values = [decode_value(value) for value in reply.siblings or ()]
            return Versioned(bool(values), values[0] if values else None, values, reply.context)
        state: KeyState = self._call(self._partition(raw), ReadKey(raw), self._deadline(timeout))
        values = [decode_value(value) for value in state.live_values()]
        context = state.encoded_context()
        return Versioned(bool(values), values[0] if values else None, values, context)

    def put_with_outcome(
        self,
        key: Key,
        value: Any,
        *,
        context: bytes | None = None,
        w: int | None = None,
        timeout: float | None = None,
    ) -> bool:
        """`put`, returning True if the key has concurrent siblings afterwards."""
        raw = normalize_key(key, self._max_key)
        encoded = encode_value(value, self._max_value)
        gateway = self._gateway()
        if gateway is not None:
            reply = self._submit(
                gateway, Op.PUT, timeout, key=raw, value_bytes=encoded, context=context, w=w
            )
            return bool(reply.conflict)
        message = WriteKey(raw, encoded, _clock(context))
        written: Written = self._call(self._partition(raw), message, self._deadline(timeout))
        return len(written.state.live_values()) > 1

    def delete(
        self,
        key: Key,
        *,
        context: bytes | None = None,
        w: int | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Remove `key`; True if a live value was there."""
        raw = normalize_key(key, self._max_key)
        gateway = self._gateway()
        if gateway is not None:
            reply = self._submit(gateway, Op.DELETE, timeout, key=raw, context=context, w=w)
            return bool(reply.deleted)
        message = WriteKey(raw, None, _clock(context))
        written: Written = self._call(self._partition(raw), message, self._deadline(timeout))
        return written.existed

    # -- batches: one message per partition, all partitions in parallel --------------

    def get_many(
        self, keys: Iterable[K], *, r: int | None = None, timeout: float | None = None
    ) -> dict[K, Any]:
        """The found keys among `keys`, mapped to their values."""
        gateway = self._gateway()
        if gateway is not None:
            wanted = [(key, normalize_key(key, self._max_key)) for key in keys]
            found: dict[K, Any] = {}
            for chunk in batches_of(wanted):
                raw_keys = tuple(raw for _, raw in chunk)
                reply = self._submit(gateway, Op.GET_MANY, timeout, keys=raw_keys, r=r)
                for (key, _), item in zip(chunk, reply.results or (), strict=True):
                    if item.error is not None:
                        raise item.error
                    if item.found and item.value_bytes is not None:
                        found[key] = decode_value(item.value_bytes)
            return found
        by_partition: defaultdict[int, list[tuple[K, bytes]]] = defaultdict(list)
        for key in keys:
            raw = normalize_key(key, self._max_key)
            by_partition[self._partition(raw)].append((key, raw))
        messages = {p: GetMany(tuple(raw for _, raw in pairs)) for p, pairs in by_partition.items()}
        replies = self._call_all(messages, self._deadline(timeout))
        found = {}
        for partition, pairs in by_partition.items():
            for (key, _), encoded in zip(pairs, replies[partition], strict=True):
                if encoded is not None:
                    found[key] = decode_value(encoded)
        return found

    def put_many(
        self,
        items: Mapping[K, Any] | Iterable[tuple[K, Any]],
        *,
        w: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Store many pairs; each partition applies its share in one transaction."""
        pairs = items.items() if isinstance(items, Mapping) else items
        encoded = [
            (normalize_key(key, self._max_key), encode_value(value, self._max_value))
            for key, value in pairs
        ]
        gateway = self._gateway()
        if gateway is not None:
            for chunk in batches_of(encoded):
                put_items = tuple(PutItem(raw, value, None) for raw, value in chunk)
                reply = self._submit(gateway, Op.PUT_MANY, timeout, items=put_items, w=w)
                for item in reply.results or ():
                    if item.error is not None:
                        raise item.error
            return
        by_partition: defaultdict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for raw, value in encoded:
            by_partition[self._partition(raw)].append((raw, value))
        messages = {p: PutMany(tuple(writes)) for p, writes in by_partition.items()}
        self._call_all(messages, self._deadline(timeout))

    # -- through the coordinator -----------------------------------------------------

    def _gateway(self) -> RequestGateway | None:
        """The coordinator, unless this node is alone and keeps every key's one copy
        (with nobody joining, who would need the writes too)."""
        snapshot = self._ring.current
        if (
            snapshot.n_val == 1
            and len(snapshot.ring.members) == 1
            and not snapshot.next_owner_sets
            and not snapshot.detached
        ):
            return None
        gateway = self._services.gateway
        if gateway is None:
            raise UnavailableError("the node is in a cluster but its request path is not running")
        return gateway

    def _submit(
        self,
        gateway: RequestGateway,
        op: Op,
        timeout: float | None,
        *,
        key: bytes = b"",
        value_bytes: bytes = b"",
        context: bytes | None = None,
        r: int | None = None,
        w: int | None = None,
        siblings: bool = False,
        keys: tuple[bytes, ...] = (),
        items: tuple[PutItem, ...] = (),
    ) -> Reply:
        seconds = self._timeout if timeout is None else timeout
        request = Request(
            op,
            WireFormat.MSGPACK,
            None,
            key,
            value_bytes,
            context,
            r,
            w,
            max(1, int(seconds * 1000)),
            siblings,
            keys,
            items,
        )
        future = gateway.submit(request)
        try:
            # The coordinator answers by the deadline; the margin covers a busy thread.
            return future.result(timeout=seconds + 5.0)
        except FutureTimeout:
            raise RequestTimeoutError("the node did not answer in time") from None

    # -- delivery ---------------------------------------------------------------------

    def _partition(self, raw_key: bytes) -> int:
        return partition_of(raw_key, self._partitions)

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self._timeout if timeout is None else timeout)

    def _call(self, partition: int, message: object, deadline: float) -> Any:
        return self._await(partition, message, *self._send(partition, message, deadline), deadline)

    def _call_all(self, messages: Mapping[int, object], deadline: float) -> dict[int, Any]:
        """Every partition is asked at once, then every answer awaited."""
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


def _clock(context: bytes | None) -> VectorClock | None:
    decoded = client_context(context)
    return None if decoded is None else decoded[0]
