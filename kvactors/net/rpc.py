"""RPC: node-to-node calls over ZeroMQ, DEALER to ROUTER (the seed's Api.RPC).

A call travels on this node's DEALER to the peer's ROUTER as two frames,
``[MARKER, payload]``; the peer's ROUTER sees ``[routing id, MARKER, payload]`` and
answers the same way, so the reply reaches the DEALER that asked. The marker keeps node
traffic apart from client requests, which never have it as their second frame.

A payload is one byte, its format (`RPC_FORMAT`), then a msgpack map:

    call:   {"id": 12, "op": "store", "timeout": 2.0, "ops": [["read", K], ["merge", K, S]]}
    reply:  {"id": 12, "ok": true, "result": {...}}
            {"id": 12, "ok": false, "error": {"code": "timeout", "message": "..."}}

The format byte is what lets nodes of different releases recognise each other instead of
misreading each other's maps. A node reads nothing after a format byte other than its own:
it answers such a call with a `bad_request` error in its own format that names both
formats (without the call's id, which it did not read), and it fails every call it has
waiting on a peer that answers in another format with `RpcFormatError`, naming both. Only
byte 0 is ever compared, so any two formats can tell each other apart.

`RpcClient` lives in the transport thread: `call()` sends, and its callback gets the
result or a typed error when the peer does not answer in time (`PeerUnreachableError`
if nothing could even be sent). A send that finds no live connection is retried on each
transport tick until the deadline, since a fresh DEALER connects asynchronously.
`call_threadsafe()` is the entry point for other threads (admin paths, tests) and
returns a Future.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from kvactors.core.ops import Coordinate, Delete, Get, MergeKey, Put, ReadKey, from_wire
from kvactors.core.versions import check_state_bounds
from kvactors.errors import (
    BadRequestError,
    KVActorsError,
    PeerUnreachableError,
    RequestTimeoutError,
    TooLargeError,
    UnavailableError,
    error_for_code,
)
from kvactors.net.transport import Transport
from kvactors.storage.replica import DEFAULT_LIMITS

KeyOp = Get | Put | Delete | ReadKey | MergeKey
"""A store call's operations: each names one key."""

__all__ = [
    "GOSSIP",
    "MARKER",
    "PING",
    "RPC_FORMAT",
    "STORE",
    "BadCall",
    "Call",
    "PeerNetwork",
    "RpcClient",
    "RpcFormatError",
    "decode_call",
    "decode_reply",
    "encode_call",
    "encode_error",
    "encode_result",
    "store_ops",
]

logger = logging.getLogger(__name__)

MARKER: Final = b"KVRPC1"
"""The frame in front of every call and reply: it tells node traffic from client requests.
It never changes (a node routes on it); the payload's format byte says how to read it."""
RPC_FORMAT: Final = 1
"""The format of every payload this node sends and the only one it reads: its first byte.
Raise it with any change to the payload that a node of the previous format would misread."""
_FORMAT_PREFIX: Final = bytes((RPC_FORMAT,))
# Below this size, copying a payload's body costs less than a memoryview of it.
_SMALL_PAYLOAD: Final = 4096
PING: Final = "ping"
STORE: Final = "store"
GOSSIP: Final = "gossip"
_MAX_OP_NAME = 64
MAX_CALL_OPS: Final = 10_000


class RpcFormatError(BadRequestError):
    """A call or a reply in another RPC format than this node's: nothing after its format
    byte was read. The message names the format found and `RPC_FORMAT`."""


def _foreign_format(what: str, payload: bytes) -> RpcFormatError:
    """The error for a payload whose first byte is not RPC_FORMAT; `what` says whose."""
    if not payload:
        found = "with no payload"
    elif payload[0] >> 4 == 0x8 or payload[0] in (0xDE, 0xDF):
        # A msgpack map where the byte should be: how nodes spoke before formats were
        # numbered (no format byte; the marker was the same).
        found = "without a format byte (from a node older than RPC format 1)"
    else:
        found = f"in RPC format {payload[0]}"
    return RpcFormatError(f"{what} {found}; this node speaks RPC format {RPC_FORMAT}")


def _unpack_body(payload: bytes) -> Any:
    """The msgpack map after a payload's format byte (which the caller checked)."""
    body = payload[1:] if len(payload) <= _SMALL_PAYLOAD else memoryview(payload)[1:]
    return msgpack.unpackb(body, raw=False, strict_map_key=True)


def _pack(message: dict[str, Any]) -> bytes:
    # One copy more than packb alone: a memcpy, next to the packing it follows.
    packed: bytes = msgpack.packb(message)
    return _FORMAT_PREFIX + packed


@dataclass(frozen=True, slots=True)
class Call:
    """A decoded RPC call, as the serving node sees it."""

    call_id: int
    op: str
    timeout: float
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadCall:
    """An RPC frame that could not be decoded; answered with `error`."""

    call_id: int | None
    error: KVActorsError


def encode_call(call_id: int, op: str, timeout: float, args: dict[str, Any]) -> bytes:
    """The payload of a call (the frame after MARKER), in RPC_FORMAT."""
    return _pack({"id": call_id, "op": op, "timeout": timeout, **args})


def decode_call(body: list[bytes]) -> Call | BadCall:
    """The call in an RPC body (the frames after the marker), validated. A call in another
    RPC format is a BadCall with an `RpcFormatError` and no id: nothing else of it is read."""
    call_id = None
    try:
        if len(body) != 1:
            raise BadRequestError(f"an RPC call is one frame after the marker, got {len(body)}")
        payload = body[0]
        if payload[:1] != _FORMAT_PREFIX:
            raise _foreign_format("an RPC call", payload)
        message = _unpack_body(payload)
        if not isinstance(message, dict):
            raise BadRequestError("an RPC call is a map")
        call_id = message.pop("id", None)
        if type(call_id) is not int:
            raise BadRequestError("an RPC call needs an integer id")
        op = message.pop("op", None)
        timeout = message.pop("timeout", None)
        if type(op) is not str or not 0 < len(op) <= _MAX_OP_NAME:
            raise BadRequestError("an RPC call needs an op name")
        if type(timeout) not in (int, float) or not 0 < timeout <= 3600:
            raise BadRequestError("an RPC call needs a timeout in seconds")
        return Call(call_id, op, float(timeout), message)
    except KVActorsError as exc:
        return BadCall(call_id, exc)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        return BadCall(call_id, BadRequestError(f"malformed RPC call: {exc}"))


def store_ops(
    call: Call,
    max_key_bytes: int,
    max_value_bytes: int,
    *,
    max_clock_skew: float = DEFAULT_LIMITS.max_clock_skew,
    wall_clock: Callable[[], float] = time.time,
) -> list[KeyOp]:
    """The StoreServer operations of a `store` call, held to the client limits.

    The RPC channel shares the node's port with clients, so a store call gets the same
    scrutiny as a client request: key and value sizes, and values that are one whole
    msgpack object (what every reader of the store expects to find). A merge's state is
    held to this node's clock as well (`check_state_bounds`): no stamp more than
    `max_clock_skew` seconds ahead of `wall_clock`, and no counter such a clock could not
    have made, so that no state from outside leaves a key unable to take a write.
    """
    raw_ops = call.args.get("ops")
    if not isinstance(raw_ops, list) or not 0 < len(raw_ops) <= MAX_CALL_OPS:
        raise BadRequestError("a store call needs a list of ops")

    def check_value(value: bytes) -> bytes:
        return checked_value(value, max_value_bytes)

    max_wall_ms = int((wall_clock() + max_clock_skew) * 1000)
    ops: list[KeyOp] = []
    for index, raw in enumerate(raw_ops):
        op = from_wire(raw, max_key_bytes, check_value)
        if type(op) is MergeKey:
            try:
                check_state_bounds(op.state, max_wall_ms)
            except ValueError as exc:
                raise BadRequestError(f"store op {index} is a merge of {exc}") from None
        elif isinstance(op, Coordinate):
            raise BadRequestError(
                f"store op {index} is a write: a store call takes read, merge, get, put and "
                "delete ops (a write to coordinate goes in a coordinate call)"
            )
        ops.append(op)
    return ops


def checked_value(value: bytes, max_value_bytes: int) -> bytes:
    if len(value) > max_value_bytes:
        raise TooLargeError(f"value is {len(value)} bytes; the limit is {max_value_bytes}")
    try:
        msgpack.unpackb(value, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise BadRequestError(f"a stored value must be one msgpack object: {exc}") from None
    return value


def encode_result(call_id: int, result: Any) -> bytes:
    """The payload of a successful reply, in RPC_FORMAT."""
    return _pack({"id": call_id, "ok": True, "result": result})


def encode_error(call_id: int | None, error: KVActorsError) -> bytes:
    """The payload of an error reply, in RPC_FORMAT."""
    body = {"code": error.code, "message": str(error)[:1000]}
    return _pack({"id": call_id, "ok": False, "error": body})


def decode_reply(payload: bytes) -> dict[str, Any]:
    """The map of a reply's payload (the frame after MARKER): `RpcFormatError` if it is in
    another RPC format, ValueError (or a msgpack error) if it is not a map."""
    if payload[:1] != _FORMAT_PREFIX:
        raise _foreign_format("an RPC reply", payload)
    reply = _unpack_body(payload)
    if not isinstance(reply, dict):
        raise ValueError("an RPC reply is a map")
    return reply


ResultCallback = Callable[[Any, KVActorsError | None], None]


class _Outstanding:
    __slots__ = ("callback", "deadline", "endpoint", "frames", "sent")

    def __init__(
        self, endpoint: str, frames: list[bytes], deadline: float, callback: ResultCallback
    ) -> None:
        self.endpoint = endpoint
        self.frames = frames
        self.deadline = deadline
        self.callback = callback
        self.sent = False


class RpcClient:
    """Outgoing calls to peers. Everything but `call_threadsafe` runs in the transport thread."""

    def __init__(
        self, transport: Transport, clock: Callable[[], float], default_timeout: float
    ) -> None:
        self._transport = transport
        self._clock = clock
        self._default_timeout = default_timeout
        self._ids = itertools.count(1)
        self._outstanding: dict[int, _Outstanding] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._resend: list[int] = []
        # (endpoint, format byte) of each peer found answering in another RPC format,
        # so that the log says so once per peer, not once per reply.
        self._foreign_peers: set[tuple[str, int]] = set()
        self.route: Callable[[str], str | None] = _as_given
        """Where a call meant for an endpoint goes; None: nowhere yet (it fails at once
        as unreachable). A joining node routes its seeds' client endpoints this way."""

    def call(
        self,
        endpoint: str,
        op: str,
        args: dict[str, Any],
        callback: ResultCallback,
        timeout: float | None = None,
    ) -> None:
        """Send a call; `callback(result, None)` or `callback(None, error)` follows once."""
        timeout = self._default_timeout if timeout is None else timeout
        routed = self.route(endpoint)
        if routed is None:
            callback(None, PeerUnreachableError(f"{endpoint} has not answered yet"))
            return
        endpoint = routed
        call_id = next(self._ids)
        frames = [MARKER, encode_call(call_id, op, timeout, args)]
        deadline = self._clock() + timeout
        outstanding = _Outstanding(endpoint, frames, deadline, callback)
        self._outstanding[call_id] = outstanding
        heapq.heappush(self._deadlines, (deadline, call_id))
        self._try_send(call_id, outstanding)

    def call_threadsafe(
        self, endpoint: str, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Future[Any]:
        """`call` from any thread; the Future holds the result or the typed error."""
        future: Future[Any] = Future()

        def settle(result: Any, error: KVActorsError | None) -> None:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        if not self._transport.call_soon(lambda: self.call(endpoint, op, args, settle, timeout)):
            future.set_exception(UnavailableError("the node's transport has stopped"))
        return future

    def on_reply(self, endpoint: str, frames: list[bytes]) -> None:
        """A frame from a peer's ROUTER on our DEALER to it."""
        if len(frames) != 2 or frames[0] != MARKER:
            logger.warning("ignoring a malformed RPC reply from %s", endpoint)
            return
        payload = frames[1]
        if payload[:1] != _FORMAT_PREFIX:
            self._peer_speaks_another_format(endpoint, payload)
            return
        try:
            reply = decode_reply(payload)
            call_id = reply["id"]
        except (ValueError, TypeError, KeyError, msgpack.UnpackException):
            logger.warning("ignoring an undecodable RPC reply from %s", endpoint)
            return
        outstanding = self._outstanding.pop(call_id, None)
        if outstanding is None:
            return  # it timed out already
        if reply.get("ok"):
            outstanding.callback(reply.get("result"), None)
        else:
            error = reply.get("error") or {}
            outstanding.callback(
                None, error_for_code(str(error.get("code")), str(error.get("message")))
            )

    def on_tick(self, now: float) -> None:
        resend, self._resend = self._resend, []
        for call_id in resend:
            outstanding = self._outstanding.get(call_id)
            if outstanding is not None:
                self._try_send(call_id, outstanding)
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, call_id = heapq.heappop(deadlines)
            outstanding = self._outstanding.pop(call_id, None)
            if outstanding is None:
                continue
            error: KVActorsError
            if outstanding.sent:
                error = RequestTimeoutError(f"{outstanding.endpoint} did not answer in time")
            else:
                error = PeerUnreachableError(f"{outstanding.endpoint} is not reachable")
            outstanding.callback(None, error)

    @property
    def peers_in_other_formats(self) -> list[dict[str, Any]]:
        """The peers found answering in another RPC format: their calls fail at once."""
        return [
            {"endpoint": endpoint, "format": fmt} for endpoint, fmt in sorted(self._foreign_peers)
        ]

    def _peer_speaks_another_format(self, endpoint: str, payload: bytes) -> None:
        """A reply in another RPC format: which call it answers is unknown (its id is not
        read), but every call waiting on that peer is in this node's format, which the
        peer does not speak, so they all fail, now rather than at their deadlines."""
        error = _foreign_format(f"{endpoint} answered", payload)
        seen = (endpoint, payload[0] if payload else -1)
        if seen not in self._foreign_peers:
            self._foreign_peers.add(seen)
            logger.warning("%s", error)
        waiting = [
            call_id
            for call_id, outstanding in self._outstanding.items()
            if outstanding.endpoint == endpoint
        ]
        for call_id in waiting:
            self._outstanding.pop(call_id).callback(None, error)

    def fail_all(self, error: KVActorsError) -> None:
        outstanding, self._outstanding = self._outstanding, {}
        self._deadlines.clear()
        for call in outstanding.values():
            call.callback(None, error)

    def _try_send(self, call_id: int, outstanding: _Outstanding) -> None:
        if self._transport.send_to_peer(outstanding.endpoint, outstanding.frames):
            outstanding.sent = True
        else:
            self._resend.append(call_id)


def _as_given(endpoint: str) -> str:
    return endpoint


InboundHandler = Callable[[dict[str, Any]], Any]
"""Serves one RPC op on the transport thread: returns the result (msgpack-able) or raises a
KVActorsError. It must not block: an actor that does the work is told, not asked."""


class PeerNetwork:
    """How a node's components reach their peers, and are reached by them. Thread-safe.

    Components start before the transport (the seed's order puts the RequestHandler
    last), so they hold this instead: the RequestHandler attaches its RPC client while
    the transport runs, and calls made before (or after) fail at once with
    `UnavailableError`. Components register the RPC ops they serve with `handle`.
    """

    def __init__(self) -> None:
        self._client: RpcClient | None = None
        self._handlers: dict[str, InboundHandler] = {}

    def attach(self, client: RpcClient) -> None:
        self._client = client

    def detach(self, client: RpcClient) -> None:
        if self._client is client:
            self._client = None

    def call(
        self, endpoint: str, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Future[Any]:
        """Call `op` on the node at `endpoint`; the Future holds the result or a typed error."""
        client = self._client
        if client is None:
            future: Future[Any] = Future()
            future.set_exception(UnavailableError("this node's transport is not running"))
            return future
        return client.call_threadsafe(endpoint, op, args, timeout)

    def handle(self, op: str, handler: InboundHandler) -> None:
        """Serve RPC `op` with `handler` (replacing any earlier one)."""
        self._handlers[op] = handler

    def handler_for(self, op: str) -> InboundHandler | None:
        return self._handlers.get(op)
