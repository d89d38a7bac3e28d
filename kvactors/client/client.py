"""Client: get/put/delete on a kvactors cluster over ZeroMQ (the seed's Api.Client).

The caller never needs to know which node holds a key: any node serves any request.
The client talks to one node at a time over a DEALER socket, with many requests in
flight (batches are split into chunks that are all sent before any reply is awaited).

Timeouts follow the Lazy Pirate pattern of the ZeroMQ guide: when a node does not
answer in time, the client closes its socket (so a late reply cannot be mistaken for a
new one), moves to the next endpoint and sends the unanswered requests again; after
`retries` such moves it raises `RequestTimeoutError`. Every operation is idempotent, so
sending one again is safe.

Secure clusters (docs/security.md): given `secret_key` (the client's NAME.key_secret) and
`trust_dir` (the public certificates it trusts), the client talks CURVE, pinned to a
trusted node key. It knows endpoints only, not which node key each has, so on its first
connection to an endpoint it tries every trusted node key at once and keeps the socket
whose handshake completes (a socket monitor reports it); the key found is remembered
for the endpoint. A server holding no trusted key (an impersonator) completes no
handshake and is never sent a request.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import zmq
from zmq.utils.monitor import recv_monitor_message

from kvactors.client.batches import batches_of
from kvactors.client.versioned import Versioned, VersionedWrites
from kvactors.codec import Key
from kvactors.errors import ConfigError, RequestTimeoutError, TooLargeError
from kvactors.net.certs import Certificate, Role, TrustSet, load_certificate
from kvactors.net.protocol import Op, WireFormat, default_max_frame_bytes, encode_request
from kvactors.net.replies import decode_reply, reply_error
from kvactors.net.zap import secure_client

__all__ = ["Client"]

K = TypeVar("K", bound=Key)

# The largest frame a node with the default key and value limits accepts: a larger one
# is dropped by its socket with the connection, unanswered (docs/protocol.md, limits).
DEFAULT_MAX_FRAME_BYTES = default_max_frame_bytes(64 * 1024, 1024 * 1024)

_HANDSHAKE_SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_HANDSHAKE_FAILED = int(
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

PathLike = str | os.PathLike[str]


class Client(VersionedWrites):
    """A connection to a kvactors cluster. Not thread-safe: use one Client per thread.

    `endpoints` is one endpoint (``"tcp://host:port"``) or several; the client starts
    with the first and moves on when one does not answer. A missing key is not an
    error: `get` returns `default`. With `secret_key` and `trust_dir` the client talks
    to a secure cluster (see the module docstring).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 5.0,
        retries: int = 2,
        fmt: WireFormat = WireFormat.MSGPACK,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        secret_key: PathLike | None = None,
        trust_dir: PathLike | None = None,
    ) -> None:
        self._endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self._endpoints:
            raise ConfigError("a Client needs at least one endpoint")
        if timeout <= 0 or retries < 0 or max_frame_bytes <= 0:
            raise ConfigError(
                "timeout and max_frame_bytes must be positive and retries zero or more"
            )
        self._timeout = timeout
        self._retries = retries
        # The nodes' frame limit: a batch is cut to fit it, and a request that cannot
        # fit is refused here with a clear error instead of timing out there.
        self._max_frame_bytes = max_frame_bytes
        self._fmt = fmt
        self._ids = itertools.count(1)
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._current = 0
        self._socket: zmq.Socket[bytes] | None = None
        self._certificate, self._trust = _client_keys(secret_key, trust_dir)
        self._server_keys: dict[str, bytes] = {}  # the node key found at each endpoint
        self._handshakes_failed = False

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to now."""
        return self._endpoints[self._current]

    # -- operations -----------------------------------------------------------------------

    def get(
        self, key: Key, default: Any = None, *, r: int | None = None, timeout: float | None = None
    ) -> Any:
        """The value stored under `key`, or `default` when there is none."""
        reply = self._call(Op.GET, timeout, key=key, r=r)
        return reply["value"] if reply.get("found") else default

    def get_versioned(
        self, key: Key, *, r: int | None = None, timeout: float | None = None
    ) -> Versioned:
        """The key with every live sibling and the causal context for the next write."""
        reply = self._call(Op.GET, timeout, key=key, r=r, siblings=True)
        siblings = list(reply.get("siblings") or ())
        return Versioned(
            bool(siblings), siblings[0] if siblings else None, siblings, reply.get("context")
        )

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
        reply = self._call(Op.PUT, timeout, key=key, value=value, context=context, w=w)
        return bool(reply.get("conflict"))

    def delete(
        self,
        key: Key,
        *,
        context: bytes | None = None,
        w: int | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Remove `key` (a tombstone on W replicas); True if a live value was there."""
        reply = self._call(Op.DELETE, timeout, key=key, context=context, w=w)
        return bool(reply.get("deleted"))

    def ping(self, *, timeout: float | None = None) -> float:
        """Seconds a round trip to the current node took."""
        started = time.perf_counter()
        self._call(Op.PING, timeout)
        return time.perf_counter() - started

    def leave(self, *, timeout: float | None = None) -> None:
        """Ask the current node to leave its cluster; it stops once it has."""
        self._call(Op.LEAVE, timeout)

    def remove(self, member: str, *, timeout: float | None = None) -> None:
        """Take a dead or left `member` out of the cluster for good (an admin's call):
        its record becomes a tombstone that stale gossip cannot bring back.
        `BadRequestError` says why not, for a member that is alive or unknown."""
        self._call(Op.REMOVE, timeout, node=member)

    def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The current node's status report."""
        status: dict[str, Any] = self._call(Op.STATUS, timeout)["status"]
        return status

    def get_many(
        self, keys: Iterable[K], *, r: int | None = None, timeout: float | None = None
    ) -> dict[K, Any]:
        """The found keys among `keys`, mapped to their values.

        A node answers as many keys as fit one reply frame and the rest `too_large`
        ("the reply is full"); those are asked for again, in as many rounds as it takes
        (each round gets at least one key back)."""
        wanted = list(keys)
        found: dict[K, Any] = {}
        while wanted:
            chunks: list[list[K]] = []
            frames: list[tuple[int, bytes]] = []
            for chunk in batches_of(wanted):
                self._fitting(Op.GET_MANY, "keys", chunk, chunks, frames, r=r)
            again: list[K] = []
            for chunk, reply in zip(chunks, self._exchange(frames, timeout), strict=True):
                for key, item in zip(chunk, reply["results"], strict=True):
                    if _reply_was_full(item):
                        again.append(key)
                        continue
                    _raise_for(item)
                    if item.get("found"):
                        found[key] = item["value"]
            if len(again) == len(wanted):
                raise TooLargeError("a node answered no key of a get_many: its replies are full")
            wanted = again
        return found

    def put_many(
        self,
        items: Mapping[K, Any] | Iterable[tuple[K, Any]],
        *,
        w: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Store many pairs; raises the first error any item met."""
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        frames: list[tuple[int, bytes]] = []
        for chunk in batches_of(pairs):
            self._fitting(Op.PUT_MANY, "items", chunk, [], frames, w=w)
        for reply in self._exchange(frames, timeout):
            for item in reply["results"]:
                _raise_for(item)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- the exchange --------------------------------------------------------------------

    def _call(self, op: Op, timeout: float | None, **fields: Any) -> dict[str, Any]:
        return self._exchange([self._encode(op, next(self._ids), **fields)], timeout)[0]

    def _encode(self, op: Op, request_id: int, **fields: Any) -> tuple[int, bytes]:
        request_id, frame = self._encode_any_size(op, request_id, **fields)
        if len(frame) > self._max_frame_bytes:
            raise TooLargeError(
                f"the request is {len(frame)} bytes encoded; a node takes frames of at "
                f"most {self._max_frame_bytes} (its max_value_bytes and max_key_bytes set "
                "that limit; a Client for a node with larger ones needs max_frame_bytes)"
            )
        return request_id, frame

    def _encode_any_size(self, op: Op, request_id: int, **fields: Any) -> tuple[int, bytes]:
        fields = {name: value for name, value in fields.items() if value is not None}
        return request_id, encode_request(op, request_id=request_id, fmt=self._fmt, **fields)

    def _fitting(
        self,
        op: Op,
        field: str,
        chunk: list[Any],
        chunks: list[Any],
        frames: list[tuple[int, bytes]],
        **options: Any,
    ) -> None:
        """Append the requests for `chunk` (a batch's keys or items) to `frames`, halved
        until each fits a frame; `chunks` gets each request's part of the batch."""
        request = self._encode_any_size(op, next(self._ids), **{field: chunk}, **options)
        if len(request[1]) > self._max_frame_bytes and len(chunk) > 1:
            half = len(chunk) // 2
            self._fitting(op, field, chunk[:half], chunks, frames, **options)
            self._fitting(op, field, chunk[half:], chunks, frames, **options)
            return
        if len(request[1]) > self._max_frame_bytes:
            request = self._encode(op, request[0], **{field: chunk}, **options)  # raises
        chunks.append(chunk)
        frames.append(request)

    def _exchange(
        self, requests: list[tuple[int, bytes]], timeout: float | None
    ) -> list[dict[str, Any]]:
        """Send every request, wait for every reply; Lazy Pirate on silence."""
        timeout = self._timeout if timeout is None else timeout
        replies: dict[int, dict[str, Any]] = {}
        tried: list[str] = []
        for _ in range(self._retries + 1):
            tried.append(self.endpoint)
            sock = self._connected(timeout)
            if sock is None:  # secure: no trusted node completed a handshake
                self._abandon_node()
                continue
            for request_id, frame in requests:
                if request_id not in replies:
                    sock.send(frame)
            self._collect(sock, {rid for rid, _ in requests}, replies, timeout)
            if len(replies) == len(requests):
                break
            self._abandon_node()
        else:
            why = (
                " (no CURVE handshake completed: is this client's key in the nodes' trust "
                "dir, and a node's key in the client's?)"
                if self._handshakes_failed
                else ""
            )
            raise RequestTimeoutError(
                f"no reply within {timeout}s from {', '.join(tried)} "
                f"({len(tried)} attempt{'s' if len(tried) > 1 else ''}){why}"
            )
        ordered = [replies[request_id] for request_id, _ in requests]
        for reply in ordered:
            _raise_for(reply)
        return ordered

    def _collect(
        self,
        sock: zmq.Socket[bytes],
        wanted: set[int],
        replies: dict[int, dict[str, Any]],
        timeout: float,
    ) -> None:
        deadline = time.monotonic() + timeout
        while len(replies) < len(wanted):
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                return
            reply = decode_reply(sock.recv_multipart()[-1])
            request_id = reply.get("id")
            if request_id in wanted:
                replies[request_id] = reply

    def _connected(self, timeout: float) -> zmq.Socket[bytes] | None:
        if self._socket is None:
            if self._certificate is None:
                sock = self._context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(self.endpoint)
                self._socket = sock
            else:
                self._socket = self._handshaken(self.endpoint, timeout)
        return self._socket

    def _handshaken(self, endpoint: str, timeout: float) -> zmq.Socket[bytes] | None:
        """A CURVE DEALER to `endpoint` whose handshake has completed with a trusted
        node key, or None if none did within `timeout`. Every candidate key is tried at
        once; the key that works is remembered for the endpoint."""
        assert self._certificate is not None and self._trust is not None
        known = self._server_keys.pop(endpoint, None)  # put back only if it still works
        keys = [known] if known is not None else _node_keys(self._trust)
        if not keys:
            raise ConfigError(f"the trust dir {self._trust.directory} holds no node key")
        tries: dict[zmq.Socket[bytes], tuple[zmq.Socket[bytes], bytes]] = {}
        for key in keys:
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            secure_client(sock, self._certificate, key)
            monitor = sock.get_monitor_socket(_HANDSHAKE_SUCCEEDED | _HANDSHAKE_FAILED)
            sock.connect(endpoint)
            tries[monitor] = (sock, key)
        winner = _first_handshake(tries, time.monotonic() + timeout)
        for monitor, (sock, key) in tries.items():
            sock.disable_monitor()
            monitor.close(linger=0)
            if sock is winner:
                self._server_keys[endpoint] = key
            else:
                sock.close(linger=0)
        self._handshakes_failed = winner is None
        return winner

    def _abandon_node(self) -> None:
        # Lazy Pirate: a fresh socket, so no late reply from the silent node is read.
        self.close()
        self._current = (self._current + 1) % len(self._endpoints)


def _client_keys(
    secret_key: PathLike | None, trust_dir: PathLike | None
) -> tuple[Certificate | None, TrustSet | None]:
    """The client's own certificate and its trust set; (None, None) without keys."""
    if secret_key is None and trust_dir is None:
        return None, None
    if secret_key is None or trust_dir is None:
        raise ConfigError(
            "secret_key and trust_dir go together: a secure client needs its own key and "
            "the node keys it trusts"
        )
    certificate = load_certificate(secret_key)
    if certificate.secret_key is None:
        raise ConfigError(f"{secret_key} is a public certificate: give the NAME.key_secret file")
    return certificate, TrustSet.load(trust_dir)


def _node_keys(trust: TrustSet) -> list[bytes]:
    return [cert.public_key for cert in trust if cert.role is Role.NODE]


def _first_handshake(
    tries: Mapping[zmq.Socket[bytes], tuple[zmq.Socket[bytes], bytes]], deadline: float
) -> zmq.Socket[bytes] | None:
    """The socket among `tries` (monitor -> (socket, key)) whose handshake completes
    first, or None once every one has failed or the deadline has passed."""
    poller = zmq.Poller()
    for monitor in tries:
        poller.register(monitor, zmq.POLLIN)
    failed: set[zmq.Socket[bytes]] = set()
    while len(failed) < len(tries):
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            return None
        for monitor, _ in poller.poll(remaining_ms):
            event = recv_monitor_message(monitor)["event"]
            if event == _HANDSHAKE_SUCCEEDED:
                return tries[monitor][0]
            failed.add(monitor)  # a refusal: libzmq retries, but it will not change
    return None


def _reply_was_full(item: Mapping[str, Any]) -> bool:
    """A get_many item the node left out of a full reply (`too_large`: a key read can
    be too large for nothing else, a stored value always fits a frame)."""
    error = item.get("error")
    return isinstance(error, Mapping) and error.get("code") == "too_large"


def _raise_for(reply: Mapping[str, Any]) -> None:
    error = reply_error(reply)
    if error is not None:
        raise error
