"""RequestHandler: requests from the network, served without blocking.

`RequestHandler` is the supervised actor (the seed's RequestHandler); it owns the
node's `Transport` and a `RequestService`, whose callbacks run in the transport thread:

1. a frame arrives on the ROUTER; the service splits off the envelope, decodes and
   validates the request (`protocol.Codec`), and answers bad input at once;
2. each key's operation is queued for its partition; when the transport has drained
   everything ready (`on_flush`), each partition's queue goes to its StoreServer as one
   `StoreBatch` (a `tell`, never an `ask`);
3. the StoreServer calls back with the results; the callback hands them to the
   transport thread, which encodes each reply and sends it with its original envelope.

Requests in flight are bounded (`max_inflight`); past it a request is answered
`overloaded` at once. Each has a deadline; the periodic tick answers `timeout` for
those past it. Node-to-node calls (RPC) arrive on the same ROUTER, marked by their first
frame, and use the same batching.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pykka

from kvactors import dispatch
from kvactors.api import rpc
from kvactors.api.protocol import (
    Codec,
    ItemResult,
    Op,
    ProtocolError,
    Reply,
    Request,
    WireFormat,
    delete_reply,
    encode_error,
    encode_reply,
    get_many_reply,
    get_reply,
    item_found,
    item_not_found,
    item_written,
    not_found_reply,
    ping_reply,
    put_many_reply,
    put_reply,
    status_reply,
)
from kvactors.api.transport import SocketOptions, Transport, TransportStats
from kvactors.cluster.gossip_protocol import Leave
from kvactors.distribution.hashing import partition_of
from kvactors.errors import (
    BadRequestError,
    InternalError,
    KVActorsError,
    OverloadedError,
    RequestTimeoutError,
    UnavailableError,
)
from kvactors.services import NodeServices
from kvactors.storage.store_server import Delete, Get, Put, StoreBatch, StoreOp
from kvactors.supervision import SupervisedActor

__all__ = ["RequestHandler", "RequestService", "ServiceStats"]

logger = logging.getLogger(__name__)

# Replicas of each key on this version's single node; quorums above it cannot be met.
_REPLICAS = 1


@dataclass(slots=True)
class ServiceStats:
    requests: int = 0
    errors: int = 0
    overloaded: int = 0
    timeouts: int = 0
    rpc_requests: int = 0
    batches: int = 0
    retried_ops: int = 0
    forwarded: int = 0


class _Pending:
    """One request waiting for StoreServers: one result slot per key."""

    __slots__ = ("deadline", "done", "missing", "results")

    def __init__(self, slots: int, deadline: float) -> None:
        self.results: list[Any] = [None] * slots
        self.missing = slots
        self.deadline = deadline
        self.done = False

    def answer(self, service: RequestService) -> None:
        """Send the reply built from `results`."""
        raise NotImplementedError

    def refuse(self, service: RequestService, error: KVActorsError) -> None:
        """Send an error reply instead."""
        raise NotImplementedError


class _ClientRequest(_Pending):
    __slots__ = ("envelope", "request")

    def __init__(
        self, envelope: list[bytes], request: Request, slots: int, deadline: float
    ) -> None:
        # The base fields set here, not through super(): one call less per request.
        self.results: list[Any] = [None] * slots
        self.missing = slots
        self.deadline = deadline
        self.done = False
        self.envelope = envelope
        self.request = request

    def answer(self, service: RequestService) -> None:
        request = self.request
        frame = encode_reply(_reply_for(request, self.results), request.fmt)
        service.send_frames([*self.envelope, frame])

    def refuse(self, service: RequestService, error: KVActorsError) -> None:
        service.send_error(self.envelope, error, self.request.request_id, self.request.fmt)


class _RpcRequest(_Pending):
    __slots__ = ("call_id", "peer")

    def __init__(self, peer: bytes, call_id: int, slots: int, deadline: float) -> None:
        super().__init__(slots, deadline)
        self.peer = peer
        self.call_id = call_id

    def answer(self, service: RequestService) -> None:
        payload = rpc.encode_result(self.call_id, {"results": self.results})
        service.send_frames([self.peer, rpc.MARKER, payload])

    def refuse(self, service: RequestService, error: KVActorsError) -> None:
        service.send_frames([self.peer, rpc.MARKER, rpc.encode_error(self.call_id, error)])


# One queued key operation: which request, which slot of its results, and the op.
_Entry = tuple[_Pending, int, StoreOp]


class RequestService:
    """The transport's handler: decodes, batches per partition, answers. Thread: transport."""

    def __init__(
        self,
        services: NodeServices,
        transport: Transport,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = services.config
        self._services = services
        self._config = config
        self._directory = services.directory
        self._ring = services.ring
        self._transport = transport
        self._clock = clock
        self._codec = Codec.from_config(config)
        self._partitions = config.partitions
        self._timeout = config.request_timeout
        self._max_inflight = config.max_inflight
        self._inflight = 0
        self._queued: defaultdict[int, list[_Entry]] = defaultdict(list)
        # Ops for keys another node owns, by that node's endpoint, forwarded per flush.
        self._forward: defaultdict[str, list[_Entry]] = defaultdict(list)
        self._local_route: tuple[str | None, ...] = (None,) * config.partitions
        self._parked: list[tuple[int, _Entry]] = []
        # Deadlines in arrival order: with the default timeout they are also in deadline
        # order, so only the head needs watching. Requests with a timeout of their own
        # go to a heap.
        self._deadlines: deque[_Pending] = deque()
        self._custom_deadlines: list[tuple[float, int, _Pending]] = []
        self._sequence = itertools.count()
        self._closing = False
        self.stats = ServiceStats()
        self.rpc = rpc.RpcClient(transport, clock, config.request_timeout)

    # -- TransportHandler --------------------------------------------------------------

    def on_client_frames(self, frames: list[bytes]) -> None:
        if len(frames) >= 3 and frames[1] == rpc.MARKER:
            self._serve_rpc(frames[0], frames[2:])
            return
        # The common shapes first: a DEALER's [id, request] and a REQ's [id, b"", request].
        count = len(frames)
        if count == 2:
            envelope, body = frames[:1], frames[1:]
        elif count == 3 and not frames[1]:
            envelope, body = frames[:2], frames[2:]
        else:
            envelope, body = _split_envelope(frames)
        self.stats.requests += 1
        if len(body) != 1:
            # protocol.py's rule, applied to the first frame: JSON if `{` comes first
            # after ASCII whitespace (a JSON client may well send " {...}").
            first = body[0].lstrip(b" \t\r\n")[:1] if body else b""
            fmt = WireFormat.JSON if first == b"{" else WireFormat.MSGPACK
            problem = BadRequestError(f"a request is exactly one frame, got {len(body)}")
            self.send_error(envelope, problem, None, fmt)
            return
        try:
            request = self._codec.decode_request(body[0])
        except ProtocolError as exc:
            self.send_error(envelope, exc, exc.request_id, exc.fmt)
            return
        try:
            self._dispatch(envelope, request)
        except KVActorsError as exc:
            self.send_error(envelope, exc, request.request_id, request.fmt)
        except Exception as exc:
            logger.exception("request %r failed", request.op)
            error = InternalError(f"{type(exc).__name__}: {exc}")
            self.send_error(envelope, error, request.request_id, request.fmt)

    def on_peer_frames(self, endpoint: str, frames: list[bytes]) -> None:
        self.rpc.on_reply(endpoint, frames)

    def on_flush(self) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0].done:  # answered: no deadline to watch
            deadlines.popleft()
        if self._forward:
            forward, self._forward = self._forward, defaultdict(list)
            for endpoint, entries in forward.items():
                self._forward_batch(endpoint, entries)
        if not self._queued:
            return
        queued, self._queued = self._queued, defaultdict(list)
        for partition, entries in queued.items():
            self._send_batch(partition, entries)

    def on_tick(self, now: float) -> None:
        self.rpc.on_tick(now)
        self._expire(now)
        if self._parked:
            parked, self._parked = self._parked, []
            for partition, entry in parked:
                if not entry[0].done:
                    self._queued[partition].append(entry)

    def on_close(self) -> None:
        self._closing = True
        error = UnavailableError("the node is shutting down")
        self.rpc.fail_all(error)
        for pending in [*self._deadlines, *(entry[2] for entry in self._custom_deadlines)]:
            self._fail(pending, error)
        self._deadlines.clear()
        self._custom_deadlines.clear()

    # -- requests ------------------------------------------------------------------------

    def _dispatch(self, envelope: list[bytes], request: Request) -> None:
        op = request.op
        if op is Op.PING:
            self._send_reply(envelope, request, ping_reply(request.request_id))
            return
        if op is Op.STATUS:
            self._send_reply(envelope, request, status_reply(request.request_id, self.status()))
            return
        if op is Op.LEAVE:
            self._services.component("gossip_protocol").tell(Leave())
            self._send_reply(envelope, request, ping_reply(request.request_id))
            return
        if request.r is not None or request.w is not None:
            _check_quorum(request.r, "r")
            _check_quorum(request.w, "w")
        if self._closing or self._inflight >= self._max_inflight:
            self._admit()  # raises the right refusal
        if op is Op.GET:
            ops: Sequence[StoreOp] = (Get(request.key),)
        elif op is Op.PUT:
            ops = (Put(request.key, request.value_bytes),)
        elif op is Op.DELETE:
            ops = (Delete(request.key),)
        elif op is Op.GET_MANY:
            ops = [Get(key) for key in request.keys]
        else:
            ops = [Put(item.key, item.value_bytes) for item in request.items]

        timeout = None if request.timeout_ms is None else request.timeout_ms / 1000
        pending = _ClientRequest(envelope, request, len(ops), self._deadline(timeout))
        self._submit(pending, ops, timeout is not None)

    def _serve_rpc(self, peer: bytes, body: list[bytes]) -> None:
        self.stats.rpc_requests += 1
        call = rpc.decode_call(body)
        if isinstance(call, rpc.BadCall):
            self._transport.send_to_client(
                [peer, rpc.MARKER, rpc.encode_error(call.call_id, call.error)]
            )
            return
        if call.op == rpc.PING:
            result = rpc.encode_result(call.call_id, {"node": self._config.name})
            self._transport.send_to_client([peer, rpc.MARKER, result])
            return
        try:
            if call.op != rpc.STORE:
                self._serve_registered_rpc(peer, call)
                return
            ops = rpc.store_ops(call, self._codec.max_key_bytes, self._codec.max_value_bytes)
            self._admit()
        except KVActorsError as exc:
            self._transport.send_to_client([peer, rpc.MARKER, rpc.encode_error(call.call_id, exc)])
            return
        except Exception as exc:
            # Anyone can send the RPC marker: a fault in checking a call (a RecursionError
            # from repr() of a deeply nested op) must not end the transport thread, whose
            # restarts, a dozen within seconds, would stop the node.
            logger.exception("RPC call %r failed", call.op)
            failure = InternalError(f"{type(exc).__name__}: {exc}")
            self._transport.send_to_client(
                [peer, rpc.MARKER, rpc.encode_error(call.call_id, failure)]
            )
            return

        # A store call is served here, whoever owns the keys now: the caller routed it by
        # its own view of the ring, and forwarding again could bounce it between views.
        pending = _RpcRequest(peer, call.call_id, len(ops), self._deadline(call.timeout))
        self._submit(pending, ops, own_timeout=True, local=True)

    def _serve_registered_rpc(self, peer: bytes, call: rpc.Call) -> None:
        """An op a component serves (gossip, ...): its handler answers without blocking."""
        handler = self._services.network.handler_for(call.op)
        if handler is None:
            raise BadRequestError(f"unknown RPC op {call.op!r}")
        payload = rpc.encode_result(call.call_id, handler(call.args))
        self._transport.send_to_client([peer, rpc.MARKER, payload])

    def _admit(self) -> None:
        """Refuse new work while closing or past the in-flight bound."""
        if self._closing:
            raise UnavailableError("the node is shutting down")
        if self._inflight >= self._max_inflight:
            self.stats.overloaded += 1
            raise OverloadedError(f"{self._inflight} requests in flight; retry later")

    # -- batching --------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        return self._clock() + (self._timeout if timeout is None else timeout)

    def _submit(
        self, pending: _Pending, ops: Sequence[StoreOp], own_timeout: bool, local: bool = False
    ) -> None:
        self._inflight += 1
        if not own_timeout:
            self._deadlines.append(pending)
        else:
            entry = (pending.deadline, next(self._sequence), pending)
            heapq.heappush(self._custom_deadlines, entry)
        queued, forward, partitions = self._queued, self._forward, self._partitions
        route = self._local_route if local else self._ring.current.route
        for slot, op in enumerate(ops):
            partition = partition_of(op.key, partitions)
            owner = route[partition]
            if owner is None:
                queued[partition].append((pending, slot, op))
            else:
                forward[owner].append((pending, slot, op))

    def _forward_batch(self, endpoint: str, entries: list[_Entry]) -> None:
        """Send the ops for keys `endpoint` owns there, as one `store` RPC."""

        def settle(result: Any, error: KVActorsError | None) -> None:
            results = result.get("results") if isinstance(result, dict) else None
            if error is None and (not isinstance(results, list) or len(results) != len(entries)):
                error = InternalError(f"{endpoint} answered a store call with {result!r:.100}")
            if error is not None:
                if not isinstance(error, RequestTimeoutError):
                    error = UnavailableError(f"the owner {endpoint} failed: {error}")
                for pending, _, _ in entries:
                    self._fail(pending, error)
                return
            assert isinstance(results, list)
            self._batch_done(entries, results)

        ops = [_op_to_wire(entry[2]) for entry in entries]
        self.stats.forwarded += len(ops)
        self.rpc.call(endpoint, rpc.STORE, {"ops": ops}, settle, self._timeout)

    def _send_batch(self, partition: int, live: list[_Entry]) -> None:
        # Ops of requests that have timed out meanwhile go along: a write may still land
        # after its timeout (docs/protocol.md says so), and filtering costs every batch.
        ref = self._directory.current(partition)
        if ref is None or not ref.is_alive():
            self._parked.extend((partition, entry) for entry in live)
            return
        batch = StoreBatch([entry[2] for entry in live], self, (partition, live))
        try:
            dispatch.tell(ref, batch)
        except pykka.ActorDeadError:
            self._parked.extend((partition, entry) for entry in live)
            return
        self.stats.batches += 1

    # -- BatchSink: called on whichever thread ran the StoreServer ----------------------

    def batch_done(self, token: tuple[int, list[_Entry]], results: list[Any]) -> None:
        if self._transport.in_loop_thread():
            self._batch_done(token[1], results)
        else:
            self._transport.call_soon(lambda: self._batch_done(token[1], results))

    def batch_failed(
        self, token: tuple[int, list[_Entry]], error: BaseException, handled: bool
    ) -> None:
        partition, entries = token
        self._transport.call_soon(lambda: self._batch_failed(partition, entries, error, handled))

    def _batch_done(self, entries: list[_Entry], results: list[Any]) -> None:
        for (pending, slot, _), result in zip(entries, results):  # noqa: B905 - equal by design
            if pending.done:
                continue
            pending.results[slot] = result
            pending.missing -= 1
            if pending.missing == 0:
                pending.done = True
                self._inflight -= 1
                pending.answer(self)

    def _batch_failed(
        self, partition: int, entries: list[_Entry], error: BaseException, handled: bool
    ) -> None:
        if not handled:
            # Never applied: it goes to the restarted StoreServer once there is one.
            self.stats.retried_ops += len(entries)
            self._parked.extend((partition, entry) for entry in entries)
            return
        failure = InternalError(f"partition {partition} failed: {error!r}")
        for pending, _, _ in entries:
            self._fail(pending, failure)

    def _fail(self, pending: _Pending, error: KVActorsError) -> None:
        if pending.done:
            return
        pending.done = True
        self._inflight -= 1
        pending.refuse(self, error)

    def _expire(self, now: float) -> None:
        deadlines, custom = self._deadlines, self._custom_deadlines
        while deadlines and (deadlines[0].done or deadlines[0].deadline <= now):
            self._time_out(deadlines.popleft())
        while custom and (custom[0][2].done or custom[0][0] <= now):
            self._time_out(heapq.heappop(custom)[2])

    def _time_out(self, pending: _Pending) -> None:
        if not pending.done:
            self.stats.timeouts += 1
            self._fail(pending, RequestTimeoutError("the request did not complete in time"))

    # -- replies ---------------------------------------------------------------------------

    def _send_reply(self, envelope: list[bytes], request: Request, reply: Reply) -> None:
        self._transport.send_to_client([*envelope, encode_reply(reply, request.fmt)])

    def send_frames(self, frames: list[bytes]) -> None:
        self._transport.send_to_client(frames)

    def send_error(
        self, envelope: list[bytes], error: KVActorsError, request_id: Any, fmt: WireFormat
    ) -> None:
        self.stats.errors += 1
        self._transport.send_to_client([*envelope, encode_error(error, request_id, fmt)])

    def status(self) -> dict[str, Any]:
        """The node's view of the cluster and its own counters (the `status` reply)."""
        transport: TransportStats = self._transport.stats
        snapshot = self._ring.current
        owned = snapshot.partitions_owned()
        return {
            "node": self._config.name,
            "endpoint": self._config.endpoint,
            "partitions": self._partitions,
            "members": [
                {
                    "name": member.name,
                    "endpoint": member.endpoint,
                    "status": member.status.value,
                    "incarnation": member.incarnation,
                    "partitions": owned.get(member.name, 0),
                }
                for member in snapshot.members
            ],
            "ring": {
                "version": snapshot.version,
                "owners": len(snapshot.ring.members),
                "balance": round(snapshot.ring.balance(1), 4),
            },
            "inflight": self._inflight,
            "requests": self.stats.requests,
            "forwarded": self.stats.forwarded,
            "errors": self.stats.errors,
            "overloaded": self.stats.overloaded,
            "timeouts": self.stats.timeouts,
            "unroutable_replies": transport.unroutable,
        }


def _op_to_wire(op: StoreOp) -> list[Any]:
    if type(op) is Get:
        return ["get", op.key]
    if type(op) is Put:
        return ["put", op.key, op.value]
    return ["delete", op.key]


def _split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(envelope, body): the envelope runs to the first empty delimiter after the routing
    id (REQ sockets, proxies and REQ_CORRELATE add frames before it), else it is the
    routing id alone (a DEALER sending bare frames)."""
    if b"" not in frames[1:-1]:  # a delimiter has a body after it
        return frames[:1], frames[1:]
    delimiter = frames.index(b"", 1)
    return frames[: delimiter + 1], frames[delimiter + 1 :]


def _check_quorum(value: int | None, name: str) -> None:
    if value is not None and value > _REPLICAS:
        raise UnavailableError(f"{name}={value}, but keys have {_REPLICAS} replica on this node")


def _reply_for(request: Request, results: list[Any]) -> Reply:
    op, request_id = request.op, request.request_id
    if op is Op.GET:
        value = results[0]
        return not_found_reply(request_id) if value is None else get_reply(request_id, value, None)
    if op is Op.PUT:
        return put_reply(request_id)
    if op is Op.DELETE:
        return delete_reply(request_id, bool(results[0]))
    if op is Op.GET_MANY:
        items: list[ItemResult] = [
            item_not_found() if value is None else item_found(value, None) for value in results
        ]
        return get_many_reply(request_id, items)
    return put_many_reply(request_id, [item_written() for _ in results])


@dataclass(frozen=True, slots=True)
class _TransportFailed:
    error: BaseException


class RequestHandler(SupervisedActor):
    """The supervised owner of the node's transport and request service.

    If the transport thread dies, this actor crashes with it, so its supervisor
    restarts both: the socket is bound again and serving resumes.
    """

    def __init__(self, services: NodeServices) -> None:
        super().__init__()
        config = services.config
        if config.bind is None:
            raise BadRequestError("a RequestHandler needs a bind endpoint")
        self._services = services
        self._config = config
        self._dispatcher = services.dispatcher
        options = SocketOptions(max_message_bytes=Codec.from_config(config).max_frame_bytes)
        self._transport = Transport(config.bind, options, name=f"{config.name}-transport")
        self._service = RequestService(services, self._transport)

    def __str__(self) -> str:
        return f"RequestHandler {self._config.name}"

    def on_start(self) -> None:
        self._transport.start(self._service, on_failure=self._transport_failed)
        # StoreServers now run on the transport thread: a request is served start to end
        # there, with no thread hand-off.
        self._dispatcher.attach(self._transport)
        self._services.network.attach(self._service.rpc)
        logger.info("node %s serving on %s", self._config.name, self._transport.endpoint)

    def on_stop(self) -> None:
        self._close()

    def on_failure(self, *_exc_info: Any) -> None:
        self._close()

    def _close(self) -> None:
        self._services.network.detach(self._service.rpc)
        self._dispatcher.detach(self._transport)
        self._transport.stop()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _TransportFailed):
            raise InternalError(f"the transport thread failed: {message.error!r}")
        return super().on_receive(message)

    def endpoint(self) -> str:
        """The endpoint the node is bound to (ports given as 0 are resolved)."""
        return self._transport.endpoint

    def status(self) -> dict[str, Any]:
        return self._service.status()

    def rpc_call(
        self, endpoint: str, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        """An RPC to a peer, for admin paths and tests: returns a Future to wait on."""
        return self._service.rpc.call_threadsafe(endpoint, op, args, timeout)

    def _transport_failed(self, error: BaseException) -> None:
        with contextlib.suppress(pykka.ActorDeadError):  # stopping already
            self.actor_ref.tell(_TransportFailed(error))
