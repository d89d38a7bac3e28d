"""RequestHandler: requests from the network, served without blocking.

`RequestHandler` is the supervised actor (the seed's RequestHandler); it owns the
node's `Transport` and a `RequestService`, whose callbacks run in the transport thread:

1. a frame arrives on the ROUTER; the service splits off the envelope, decodes and
   validates the request (`protocol.Codec`), and answers bad input at once;
2. each key of the request becomes a quorum operation (kvactors.replication.coordinator)
   on the key's N replicas: replica operations for this node are queued for their
   partition, those for peers are queued for that peer;
3. when the transport has drained everything ready (`on_flush`), each partition's queue
   goes to its StoreServer as one `StoreBatch` (a `tell`, never an `ask`), and each
   peer's queue goes out as one `store` RPC;
4. answers come back as callbacks on the transport thread; once R or W replicas of every
   key have answered, the reply goes out with the request's original envelope.

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
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any

import pykka

from kvactors.core.hashing import partition_of
from kvactors.core.membership import Leave, MemberStatus
from kvactors.core.ops import ReadKey, ReadWinner, StoreOp, WriteKey, Written
from kvactors.core.placement import RingSnapshot
from kvactors.core.versions import (
    KeyState,
    VectorClock,
    decode_context,
    state_from_wire,
    state_to_wire,
)
from kvactors.errors import (
    BadRequestError,
    InternalError,
    KVActorsError,
    OverloadedError,
    RequestTimeoutError,
    StorageError,
    UnavailableError,
    error_for_code,
)
from kvactors.net import rpc
from kvactors.net.protocol import (
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
    item_failed,
    item_found,
    item_not_found,
    item_siblings,
    item_written,
    not_found_reply,
    ping_reply,
    put_many_reply,
    put_reply,
    siblings_reply,
    status_reply,
)
from kvactors.net.transport import SocketOptions, Transport, TransportStats
from kvactors.node.services import NodeServices
from kvactors.replication.anti_entropy import AAE, AntiEntropy
from kvactors.replication.anti_entropy import answer as answer_anti_entropy
from kvactors.replication.coordinator import (
    IGNORE_ANSWERS,
    KeyOutcome,
    ReadOperation,
    ReadResult,
    ReplicaTarget,
    WriteOperation,
    WriteResult,
    distinct_live_values,
)
from kvactors.replication.hints import HintedHandoff
from kvactors.replication.join_handoff import (
    PULL,
    CatchUp,
    JoinHandoff,
    Repairs,
    StaleCopies,
    serve_pull,
)
from kvactors.replication.leave_handoff import LeaveHandoff, leave_transfers
from kvactors.runtime import dispatch
from kvactors.runtime.supervision import SupervisedActor
from kvactors.storage.backends import StorageBackend
from kvactors.storage.store_server import StoreBatch

__all__ = ["RequestHandler", "RequestService", "ServiceStats"]

logger = logging.getLogger(__name__)

COORDINATE = "coordinate"
"""The RPC op that asks a replica to coordinate writes for a node that is not one."""


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
    replica_calls: int = 0
    read_repairs: int = 0
    syncs: int = 0


class _Pending:
    """One request waiting for its keys: one result slot per key."""

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
        try:
            reply = _reply_for(request, self.results)
        except KVActorsError as error:
            service.send_error(self.envelope, error, request.request_id, request.fmt)
            return
        service.send_frames([*self.envelope, encode_reply(reply, request.fmt)])

    def refuse(self, service: RequestService, error: KVActorsError) -> None:
        service.send_error(self.envelope, error, self.request.request_id, self.request.fmt)


class _LocalRequest(_Pending):
    """A request from the embedded client of this process: answered through a Future."""

    __slots__ = ("future", "request")

    def __init__(self, request: Request, future: Future[Reply], slots: int, deadline: float):
        super().__init__(slots, deadline)
        self.request = request
        self.future = future

    def answer(self, service: RequestService) -> None:
        try:
            self.future.set_result(_reply_for(self.request, self.results))
        except KVActorsError as error:
            self.future.set_exception(error)

    def refuse(self, service: RequestService, error: KVActorsError) -> None:
        self.future.set_exception(error)


class _RpcRequest(_Pending):
    """A `store` call from a peer: replica operations on this node's StoreServers."""

    __slots__ = ("call_id", "peer")

    def __init__(self, peer: bytes, call_id: int, slots: int, deadline: float) -> None:
        super().__init__(slots, deadline)
        self.peer = peer
        self.call_id = call_id

    def answer(self, service: RequestService) -> None:
        results = [
            state_to_wire(result) if type(result) is KeyState else result for result in self.results
        ]
        payload = rpc.encode_result(self.call_id, {"results": results})
        service.send_frames([self.peer, rpc.MARKER, payload])

    def refuse(self, service: RequestService, error: KVActorsError) -> None:
        service.send_frames([self.peer, rpc.MARKER, rpc.encode_error(self.call_id, error)])


class _CoordinateRequest(_Pending):
    """A `coordinate` call from a peer: writes this node coordinates for it."""

    __slots__ = ("call_id", "peer")

    def __init__(self, peer: bytes, call_id: int, slots: int, deadline: float) -> None:
        super().__init__(slots, deadline)
        self.peer = peer
        self.call_id = call_id

    def answer(self, service: RequestService) -> None:
        results: list[list[Any]] = []
        for outcome in self.results:
            if isinstance(outcome, KVActorsError):
                results.append(["error", outcome.code, str(outcome)[:1000]])
            else:
                results.append(["ok", outcome.existed, outcome.siblings])
        payload = rpc.encode_result(self.call_id, {"results": results})
        service.send_frames([self.peer, rpc.MARKER, payload])

    def refuse(self, service: RequestService, error: KVActorsError) -> None:
        service.send_frames([self.peer, rpc.MARKER, rpc.encode_error(self.call_id, error)])


class _FillSlot:
    """The ReplicaTarget of a peer's `store` call: each answer fills its op's slot."""

    __slots__ = ("pending", "service")

    def __init__(self, service: RequestService, pending: _Pending) -> None:
        self.service = service
        self.pending = pending

    def replica_done(self, tag: Any, result: Any) -> None:
        self.service.fill(self.pending, tag, result)

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        self.service.fail(self.pending, error)


class _SoleRead:
    """The target of a read whose only replica is this node: its state is the answer."""

    __slots__ = ("pending", "service", "slot")

    def __init__(self, service: RequestService, pending: _Pending, slot: int) -> None:
        self.service = service
        self.pending = pending
        self.slot = slot

    def replica_done(self, tag: Any, result: Any) -> None:
        # A KeyState (ReadKey), or a (value, context) pair (ReadWinner): both fill the slot.
        outcome = ReadResult(result) if type(result) is KeyState else result
        self.service.fill(self.pending, self.slot, outcome)

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        self.service.fill(self.pending, self.slot, error)


class _SoleWrite(_SoleRead):
    """The target of a write whose only replica is this node."""

    __slots__ = ()

    def replica_done(self, tag: Any, result: Any) -> None:
        written: Written = result
        outcome = WriteResult(written.existed, distinct_live_values(written.state))
        self.service.fill(self.pending, self.slot, outcome)


# One queued replica operation: who hears the answer, which replica it was, and the op.
_Entry = tuple[ReplicaTarget, Any, StoreOp]
# One queued op for a peer: who hears the answer, its tag, and the op in wire form.
_PeerEntry = tuple[ReplicaTarget, Any, list[Any]]


# Most ops in one call to a peer: its answer (values read) must fit the DEALER's limit,
# `SocketOptions.reply_frames` frames.
_CALL_OPS = 64
# Most merges `to_peer_later` holds for one member before it sends them without the
# tick: a call's worth.
_LATER_OPS = _CALL_OPS


def _call_bounds(entries: list[_PeerEntry], max_bytes: int) -> list[tuple[int, int]]:
    """Where to cut `entries` into calls of at most _CALL_OPS ops and about `max_bytes`
    (the peer's ROUTER disconnects a larger frame); one op alone is always a call."""
    if len(entries) <= 1:
        return [(0, 1)] if entries else []
    bounds = []
    start = size = 0
    for index, (_, _, wire_op) in enumerate(entries):
        op_size = _wire_op_bytes(wire_op)
        if index > start and (index - start >= _CALL_OPS or size + op_size > max_bytes):
            bounds.append((start, index))
            start, size = index, 0
        size += op_size
    bounds.append((start, len(entries)))
    return bounds


def _wire_op_bytes(wire_op: list[Any]) -> int:
    """About the encoded size of a replica or coordinate op: its key and values."""
    verb, key = wire_op[0], wire_op[1]
    if verb == "merge":
        versions = wire_op[2][1]
        return len(key) + sum(len(v[0]) + 64 for v in versions if v[0]) + 64 * len(versions)
    if verb == "write":
        value, context = wire_op[2], wire_op[3]
        return len(key) + len(value or b"") + len(context or b"") + 16
    return len(key) + 16


class RequestService:
    """The transport's handler: decodes, coordinates, batches, answers. Thread: transport."""

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
        # A call to a peer stays well under the frame its ROUTER accepts.
        self._call_bytes = self._codec.max_frame_bytes // 2
        self._max_inflight = config.max_inflight
        self._inflight = 0
        self._queued: defaultdict[int, list[_Entry]] = defaultdict(list)
        self._to_peers: defaultdict[str, list[_PeerEntry]] = defaultdict(list)
        # Merges nobody waits for (to joining next owners), sent on the tick in bulk.
        self._later: defaultdict[str, list[_PeerEntry]] = defaultdict(list)
        self._to_coordinators: defaultdict[str, list[_PeerEntry]] = defaultdict(list)
        self._parked: list[tuple[int, _Entry]] = []
        # Group commit: with a storage sync, applied batches wait here until one sync
        # makes all of them durable, and only then are their results acted on.
        self._sync = services.storage_sync
        self._unsynced: list[tuple[int, list[_Entry], list[Any]]] = []
        # The fsync runs on a thread of its own, so that the next batches are applied
        # while the disk works; at most one sync at a time, the next taking every batch
        # applied meanwhile.
        self._syncer = None if self._sync is None else _Syncer(self._sync, self._synced)
        self._sync_running = False
        # Deadlines in arrival order: with the default timeout they are also in deadline
        # order, so only the head needs watching. Requests with a timeout of their own
        # go to a heap.
        self._deadlines: deque[_Pending] = deque()
        self._custom_deadlines: list[tuple[float, int, _Pending]] = []
        self._sequence = itertools.count()
        self._closing = False
        self._alone = (config.name,)  # the replica set of a key only this node holds
        self.stats = ServiceStats()
        self.rpc = rpc.RpcClient(transport, clock, config.request_timeout)
        storage = services.storage
        self.hints = (
            None
            if storage is None or not config.hinted_handoff
            else HintedHandoff(
                storage.open_hints(),
                services.ring,
                self,
                time.time,
                max_age=config.hint_max_age,
                max_bytes=config.hint_max_bytes,
            )
        )
        self.leave: LeaveHandoff | None = None

        self.stale_copies = (
            None
            if storage is None
            else StaleCopies(
                config.name,
                services.ring,
                storage,
                self,
                delay=config.handoff_drop_delay,
                holding=self._hints_waiting,
            )
        )
        trees = services.trees
        self.anti_entropy = (
            None
            if trees is None
            else AntiEntropy(
                config.name,
                trees,
                services.ring,
                self,
                interval=config.anti_entropy_interval,
                max_keys=config.anti_entropy_max_keys,
            )
        )

        self.join = (
            JoinHandoff(
                config.name,
                services.ring,
                self,
                replicas=config.replicas,
                concurrency=config.handoff_concurrency,
                catch_up=self._catch_up(),
                # The joiner told every member of itself at contact (`sync_everyone`);
                # two gossip rounds more cover a lost message.
                settle=2 * config.gossip_interval,
                rate=config.handoff_rate,
            )
            if config.join_handoff and services.incarnation == 0
            else None
        )

    def _hints_waiting(self) -> bool:
        return self.hints is not None and bool(self.hints.pending())

    def _catch_up(self) -> tuple[CatchUp, Repairs] | None:
        anti_entropy = self.anti_entropy
        if anti_entropy is None:
            return None
        return anti_entropy.exchange_now, lambda: anti_entropy.stats.keys_repaired

    @property
    def me(self) -> str:
        return self._config.name

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
        # Local batches first: a write's own replica answers, and its state then goes to
        # the other replicas in this same flush.
        if self._queued:
            self._apply_queued()
        if self._unsynced and not self._sync_running:
            self._sync_applied()
        if self._to_peers:
            to_peers, self._to_peers = self._to_peers, defaultdict(list)
            for endpoint, peer_entries in to_peers.items():
                self._call_replicas(endpoint, peer_entries)
        if self._to_coordinators:
            to_coordinators, self._to_coordinators = self._to_coordinators, defaultdict(list)
            for endpoint, peer_entries in to_coordinators.items():
                self._call_coordinator(endpoint, peer_entries)

    def _hand_over_if_leaving(self) -> None:
        if self._services.handed_over.is_set():
            return
        if self.leave is None:
            snapshot = self._ring.current
            me = snapshot.members_by_name.get(self._config.name)
            storage = self._services.storage
            if me is None or me.status is not MemberStatus.LEAVING or storage is None:
                return
            staying = [name for name in snapshot.ring.members if name != self._config.name]
            pairs = leave_transfers(
                self._config.name, staying, self._partitions, self._config.replicas
            )
            self.leave = LeaveHandoff(
                pairs, storage, self, concurrency=self._config.handoff_concurrency
            )
        self.leave.on_tick()
        if self.leave.finished:
            self._services.handed_over.set()

    def _take_over_if_joining(self) -> None:
        if self.join is None or self._services.joined.is_set():
            return
        self.join.on_tick()
        if self.join.finished:
            self._services.joined.set()

    def _apply_queued(self) -> None:
        """Every queued local batch to its StoreServer. Under group commit, the writes
        the StoreServers make meanwhile on this thread are committed together, in one
        transaction, at the end (they are acknowledged only after the sync anyway)."""
        storage = self._services.storage if self._sync is not None else None
        first_unsynced = len(self._unsynced)
        if storage is not None:
            storage.begin_group()
        try:
            while self._queued:
                queued, self._queued = self._queued, defaultdict(list)
                for partition, entries in queued.items():
                    self._send_batch(partition, entries)
        finally:
            if storage is not None:
                self._end_group(storage, first_unsynced)

    def _end_group(self, storage: StorageBackend, first_unsynced: int) -> None:
        try:
            storage.end_group()
        except StorageError as error:  # none of the group's writes is stored
            failed = self._unsynced[first_unsynced:]
            del self._unsynced[first_unsynced:]
            logger.error(
                "storage write failed, %d batches not acknowledged: %s", len(failed), error
            )
            for partition, entries, _ in failed:
                self._batch_failed(partition, entries, error, handled=True)

    def on_tick(self, now: float) -> None:
        if self._later:
            self._send_later()
        self.rpc.on_tick(now)
        self._expire(now)
        if self.anti_entropy is not None:
            self.anti_entropy.on_tick(now)
        if self.hints is not None:
            self.hints.on_tick(now)
        self._hand_over_if_leaving()
        self._take_over_if_joining()
        if self.stale_copies is not None:
            self.stale_copies.on_tick()
        if self._parked:
            parked, self._parked = self._parked, []
            for partition, entry in parked:
                self._queued[partition].append(entry)

    def on_close(self) -> None:
        self._closing = True
        if self._syncer is not None:
            self._syncer.stop()
        error = UnavailableError("the node is shutting down")
        self.rpc.fail_all(error)
        for pending in [*self._deadlines, *(entry[2] for entry in self._custom_deadlines)]:
            self.fail(pending, error)
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
        self._admit()
        timeout = None if request.timeout_ms is None else request.timeout_ms / 1000
        slots = _slot_count(request)
        pending = _ClientRequest(envelope, request, slots, self._deadline(timeout))
        self._coordinate(pending, request, timeout is not None)

    def submit(self, request: Request) -> Future[Reply]:
        """Coordinate a key request from another thread (the embedded client)."""
        future: Future[Reply] = Future()

        def start() -> None:
            try:
                self._admit()
                timeout = None if request.timeout_ms is None else request.timeout_ms / 1000
                slots = _slot_count(request)
                pending = _LocalRequest(request, future, slots, self._deadline(timeout))
                self._coordinate(pending, request, timeout is not None)
            except KVActorsError as error:
                future.set_exception(error)

        if not self._transport.call_soon(start):
            future.set_exception(UnavailableError("the node's transport has stopped"))
        return future

    def _coordinate(self, pending: _Pending, request: Request, own_timeout: bool) -> None:
        """Start one quorum operation per key of `request`."""
        snapshot = self._ring.current
        _refuse_if_detached(snapshot)
        n_val = snapshot.n_val
        op = request.op
        if op is Op.GET or op is Op.GET_MANY:
            r = _quorum(request.r, self._config.read_quorum, n_val)
            keys = (request.key,) if op is Op.GET else request.keys
            self._track(pending, own_timeout)
            for slot, key in enumerate(keys):
                self._read(pending, slot, key, snapshot, r, request.siblings)
            return
        w = _quorum(request.w, self._config.write_quorum, n_val)
        # Every context is checked before anything starts: a bad one refuses the request
        # as a whole, with nothing written.
        writes: list[tuple[bytes, bytes | None, tuple[VectorClock, bytes] | None]]
        if op is Op.PUT_MANY:
            writes = [
                (item.key, item.value_bytes, _decoded_context(item.context))
                for item in request.items
            ]
        else:
            value = request.value_bytes if op is Op.PUT else None
            writes = [(request.key, value, _decoded_context(request.context))]
        self._track(pending, own_timeout)
        for slot, (key, value, clock) in enumerate(writes):
            self._write(pending, slot, key, value, clock, snapshot, w, request.w)

    def _read(  # noqa: PLR0917 - one key's fields, named at every call
        self,
        pending: _Pending,
        slot: int,
        key: bytes,
        snapshot: RingSnapshot,
        r: int,
        siblings: bool,
    ) -> None:
        partition = partition_of(key, self._partitions)
        replicas = snapshot.replicas(partition)
        if r == 1 and replicas == self._alone:
            # The only copy is here: no quorum to track, nothing to repair; and unless
            # siblings are asked for, the record's own winner and context are the answer.
            op: StoreOp = ReadKey(key) if siblings else ReadWinner(key)
            self._queued[partition].append((_SoleRead(self, pending, slot), None, op))
            return
        ReadOperation(
            self,
            key,
            partition=partition,
            replicas=replicas,
            required=r,
            deliver=self._slot_sink(pending, slot),
        ).start()

    def _write(  # noqa: PLR0917 - one key's fields, named at every call
        self,
        pending: _Pending,
        slot: int,
        key: bytes,
        value: bytes | None,
        clock: tuple[VectorClock, bytes] | None,
        snapshot: RingSnapshot,
        w: int,
        requested_w: int | None,
    ) -> None:
        partition = partition_of(key, self._partitions)
        replicas = snapshot.replicas(partition)
        if self.me not in replicas:
            replicas = snapshot.forward_order(partition)
        next_owners = snapshot.next_owners(partition)
        if w == 1 and replicas == self._alone and not next_owners:
            write = WriteKey(key, value, None if clock is None else clock[0])
            self._queued[partition].append((_SoleWrite(self, pending, slot), None, write))
            return
        WriteOperation(
            self,
            key,
            partition=partition,
            value=value,
            context=clock,
            replicas=replicas,
            required=w,
            deliver=self._slot_sink(pending, slot),
            requested_w=requested_w,
            hint_for=snapshot.missing_replicas(partition),
            next_owners=next_owners,
        ).start()

    def _slot_sink(self, pending: _Pending, slot: int) -> Callable[[KeyOutcome], None]:
        return lambda outcome: self.fill(pending, slot, outcome)

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
            if call.op == rpc.STORE:
                self._serve_store(peer, call)
            elif call.op == COORDINATE:
                self._serve_coordinate(peer, call)
            elif call.op == AAE:
                self._serve_anti_entropy(peer, call)
            elif call.op == PULL:
                self._serve_pull(peer, call)
            else:
                self._serve_registered_rpc(peer, call)
        except KVActorsError as exc:
            self._transport.send_to_client([peer, rpc.MARKER, rpc.encode_error(call.call_id, exc)])
        except Exception as exc:
            # Anyone can send the RPC marker: a fault in checking a call (a RecursionError
            # from repr() of a deeply nested op) must not end the transport thread, whose
            # restarts, a dozen within seconds, would stop the node.
            logger.exception("RPC call %r failed", call.op)
            failure = InternalError(f"{type(exc).__name__}: {exc}")
            self._transport.send_to_client(
                [peer, rpc.MARKER, rpc.encode_error(call.call_id, failure)]
            )

    def _serve_store(self, peer: bytes, call: rpc.Call) -> None:
        """Replica operations from a coordinator elsewhere, on this node's StoreServers.

        Served here whoever owns the keys now: the caller chose this node by its own view
        of the ring, and sending them on could bounce them between views.
        """
        ops = rpc.store_ops(call, self._codec.max_key_bytes, self._codec.max_value_bytes)
        self._admit()
        pending = _RpcRequest(peer, call.call_id, len(ops), self._deadline(call.timeout))
        self._track(pending, own_timeout=True)
        target = _FillSlot(self, pending)
        for slot, op in enumerate(ops):
            self._queued[partition_of(op.key, self._partitions)].append((target, slot, op))

    def _serve_coordinate(self, peer: bytes, call: rpc.Call) -> None:
        """Writes a node that holds no replica of their keys asks this one to coordinate."""
        writes = _coordinate_ops(call, self._codec)
        self._admit()
        pending = _CoordinateRequest(peer, call.call_id, len(writes), self._deadline(call.timeout))
        snapshot = self._ring.current
        _refuse_if_detached(snapshot)
        operations = []
        for slot, (key, value, context, requested_w) in enumerate(writes):
            partition = partition_of(key, self._partitions)
            w = _quorum(requested_w, self._config.write_quorum, snapshot.n_val)
            operations.append(
                WriteOperation(
                    self,
                    key,
                    partition=partition,
                    value=value,
                    context=context,
                    replicas=snapshot.replicas(partition),
                    required=w,
                    deliver=self._slot_sink(pending, slot),
                    requested_w=requested_w,
                    coordinate_here=True,
                    hint_for=snapshot.missing_replicas(partition),
                    next_owners=snapshot.next_owners(partition),
                )
            )
        self._track(pending, own_timeout=True)
        for operation in operations:
            operation.start()

    def _serve_anti_entropy(self, peer: bytes, call: rpc.Call) -> None:
        """A peer's anti-entropy exchange asks for this node's tree hashes or keys."""
        trees = self._services.trees
        if trees is None:
            raise UnavailableError(f"{self._config.name} runs no anti-entropy")
        result = rpc.encode_result(call.call_id, answer_anti_entropy(trees, call.args))
        self._transport.send_to_client([peer, rpc.MARKER, result])

    def _serve_pull(self, peer: bytes, call: rpc.Call) -> None:
        """A joining node pulls keys of the partitions it takes over from this one."""
        storage = self._services.storage
        if storage is None:
            raise UnavailableError(f"{self._config.name} has no storage open")
        answer = serve_pull(storage, self._partitions, call.args, self._call_bytes)
        result = rpc.encode_result(call.call_id, answer)
        self._transport.send_to_client([peer, rpc.MARKER, result])

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

    def _deadline(self, timeout: float | None) -> float:
        return self._clock() + (self._timeout if timeout is None else timeout)

    def _track(self, pending: _Pending, own_timeout: bool) -> None:
        self._inflight += 1
        if not own_timeout:
            self._deadlines.append(pending)
        else:
            entry = (pending.deadline, next(self._sequence), pending)
            heapq.heappush(self._custom_deadlines, entry)

    # -- ReplicaChannel: how the coordinator reaches replicas ---------------------------

    def to_local(self, partition: int, op: StoreOp, target: ReplicaTarget, tag: Any) -> None:
        self._queued[partition].append((target, tag, op))

    def to_peer(self, name: str, wire_op: list[Any], target: ReplicaTarget, tag: Any) -> None:
        self._queue_for(self._to_peers, name, (target, tag, wire_op))

    def to_peer_later(self, name: str, wire_op: list[Any]) -> None:
        endpoint = self._ring.current.endpoint_of(name)
        if endpoint is None:
            return  # not a member any more: nobody to tell
        entries = self._later[endpoint]
        entries.append((IGNORE_ANSWERS, None, wire_op))
        if len(entries) >= _LATER_OPS:
            self._call_replicas(endpoint, self._later.pop(endpoint))

    def _send_later(self) -> None:
        later, self._later = self._later, defaultdict(list)
        for endpoint, entries in later.items():
            self._call_replicas(endpoint, entries)

    def coordinate_at(self, name: str, wire_op: list[Any], target: ReplicaTarget, tag: Any) -> None:
        self._queue_for(self._to_coordinators, name, (target, tag, wire_op))

    def _queue_for(
        self, queues: defaultdict[str, list[_PeerEntry]], name: str, entry: _PeerEntry
    ) -> None:
        """Queue `entry` for member `name`'s next call this flush, if it is still one."""
        endpoint = self._ring.current.endpoint_of(name)
        if endpoint is None:
            entry[0].replica_failed(entry[1], UnavailableError(f"{name} is not a member any more"))
        else:
            queues[endpoint].append(entry)

    def call_peer(
        self,
        endpoint: str,
        op: str,
        args: dict[str, Any],
        settle: Callable[[Any, KVActorsError | None], None],
    ) -> None:
        """One RPC of a background task (anti-entropy), answered through `settle`."""
        self.rpc.call(endpoint, op, args, settle, self._timeout)

    def hint(self, partition: int, key: bytes, target: str) -> None:
        if self.hints is not None:
            self.hints.add(target, partition, key)

    def count_read_repair(self) -> None:
        self.stats.read_repairs += 1

    # -- batching --------------------------------------------------------------------------

    def _call_replicas(self, endpoint: str, entries: list[_PeerEntry]) -> None:
        """The replica ops for one peer, as one `store` RPC."""

        def answered(target: ReplicaTarget, tag: Any, wire_op: list[Any], answer: Any) -> None:
            if wire_op[0] != "read":
                target.replica_done(tag, answer)
                return
            try:
                state = state_from_wire(answer)
            except ValueError as exc:
                target.replica_failed(tag, InternalError(f"{endpoint}: {exc}"))
            else:
                target.replica_done(tag, state)

        self.stats.replica_calls += 1
        self._call_peer(endpoint, rpc.STORE, entries, answered)

    def _call_coordinator(self, endpoint: str, entries: list[_PeerEntry]) -> None:
        """Writes for a replica to coordinate, as one `coordinate` RPC."""

        def answered(target: ReplicaTarget, tag: Any, _wire_op: list[Any], answer: Any) -> None:
            if isinstance(answer, list) and len(answer) == 3 and answer[0] == "ok":
                target.replica_done(tag, answer[1:])
            elif isinstance(answer, list) and len(answer) == 3 and answer[0] == "error":
                target.replica_failed(tag, error_for_code(str(answer[1]), str(answer[2])))
            else:
                failure = InternalError(f"{endpoint} answered a write with {answer!r:.100}")
                target.replica_failed(tag, failure)

        self.stats.forwarded += len(entries)
        self._call_peer(endpoint, COORDINATE, entries, answered)

    def _call_peer(
        self,
        endpoint: str,
        op: str,
        entries: list[_PeerEntry],
        answered: Callable[[ReplicaTarget, Any, list[Any], Any], None],
    ) -> None:
        """`entries`' ops in as few RPCs as fit a frame (`_call_bounds`); each entry hears
        its own answer, or the error of its call as a whole."""
        for start, end in _call_bounds(entries, self._call_bytes):
            self._call_peer_once(endpoint, op, entries[start:end], answered)

    def _call_peer_once(
        self,
        endpoint: str,
        op: str,
        entries: list[_PeerEntry],
        answered: Callable[[ReplicaTarget, Any, list[Any], Any], None],
    ) -> None:
        def settle(result: Any, error: KVActorsError | None) -> None:
            results = result.get("results") if isinstance(result, dict) else None
            if error is None and (not isinstance(results, list) or len(results) != len(entries)):
                error = InternalError(f"{endpoint} answered a {op} call with {result!r:.100}")
            if error is not None:
                for target, tag, _ in entries:
                    target.replica_failed(tag, error)
                return
            assert isinstance(results, list)
            for (target, tag, wire_op), answer in zip(entries, results):  # noqa: B905
                answered(target, tag, wire_op, answer)

        ops = [entry[2] for entry in entries]
        self.rpc.call(endpoint, op, {"ops": ops}, settle, self._timeout)

    def _send_batch(self, partition: int, live: list[_Entry]) -> None:
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
            self._applied(token[0], token[1], results)
        else:
            self._transport.call_soon(lambda: self._applied(token[0], token[1], results))

    def batch_failed(
        self, token: tuple[int, list[_Entry]], error: BaseException, handled: bool
    ) -> None:
        partition, entries = token
        self._transport.call_soon(lambda: self._batch_failed(partition, entries, error, handled))

    def _applied(self, partition: int, entries: list[_Entry], results: list[Any]) -> None:
        if self._sync is None:
            self._batch_done(entries, results)
        else:
            self._unsynced.append((partition, entries, results))  # on_flush syncs them

    def _sync_applied(self) -> None:
        """One sync for every batch applied since the last: group commit."""
        applied, self._unsynced = self._unsynced, []
        assert self._syncer is not None
        self._sync_running = True
        self._syncer.sync(applied)

    def _synced(self, applied: list[tuple[int, list[_Entry], list[Any]]], error: Any) -> None:
        """From the sync thread: `applied` is on disk (or failed to get there)."""

        def on_transport_thread() -> None:
            self._sync_running = False
            if error is not None:  # a storage failure fails these requests, not the node
                logger.error(
                    "storage sync failed, %d batches unacknowledged: %s", len(applied), error
                )
                for partition, entries, _ in applied:
                    self._batch_failed(partition, entries, error, handled=True)
            else:
                self.stats.syncs += 1
                for _, entries, results in applied:
                    self._batch_done(entries, results)
            if self._unsynced:  # what was applied while the disk worked
                self._sync_applied()

        self._transport.call_soon(on_transport_thread)

    def _batch_done(self, entries: list[_Entry], results: list[Any]) -> None:
        for (target, tag, _), result in zip(entries, results):  # noqa: B905 - equal by design
            target.replica_done(tag, result)

    def _batch_failed(
        self, partition: int, entries: list[_Entry], error: BaseException, handled: bool
    ) -> None:
        if not handled:
            # Never applied: it goes to the restarted StoreServer once there is one.
            self.stats.retried_ops += len(entries)
            self._parked.extend((partition, entry) for entry in entries)
            return
        failure = InternalError(f"partition {partition} failed: {error!r}")
        for target, tag, _ in entries:
            target.replica_failed(tag, failure)

    # -- results ---------------------------------------------------------------------------

    def fill(self, pending: _Pending, slot: int, result: Any) -> None:
        if pending.done:
            return
        pending.results[slot] = result
        pending.missing -= 1
        if pending.missing == 0:
            pending.done = True
            self._inflight -= 1
            pending.answer(self)

    def fail(self, pending: _Pending, error: KVActorsError) -> None:
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
            self.fail(pending, RequestTimeoutError("the request did not complete in time"))

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
            "replication": {
                "replicas": self._config.replicas,
                "n": snapshot.n_val,
                "r": min(self._config.read_quorum, snapshot.n_val),
                "w": min(self._config.write_quorum, snapshot.n_val),
            },
            "inflight": self._inflight,
            "requests": self.stats.requests,
            "forwarded": self.stats.forwarded,
            "read_repairs": self.stats.read_repairs,
            "errors": self.stats.errors,
            "overloaded": self.stats.overloaded,
            "timeouts": self.stats.timeouts,
            "unroutable_replies": transport.unroutable,
            "peer_sends_dropped": transport.peer_send_dropped,
            "storage": self._storage_status(),
            "handoff": None if self.leave is None else self.leave.status(),
            "join": None if self.join is None else self.join.status(),
            "dropped": None
            if self.stale_copies is None
            else {
                "partitions": self.stale_copies.partitions_dropped,
                "keys": self.stale_copies.keys_dropped,
            },
            "hints": None
            if self.hints is None
            else {"pending": self.hints.pending(), **asdict(self.hints.stats)},
            "anti_entropy": (
                None if self.anti_entropy is None else asdict(self.anti_entropy.stats)
            ),
        }

    def _storage_status(self) -> dict[str, Any]:
        backend = self._services.storage
        status: dict[str, Any] = {"backend": self._config.storage, "syncs": self.stats.syncs}
        if backend is not None:
            counts = [
                (table, len(table)) for table in map(backend.open_table, range(self._partitions))
            ]
            status["keys"] = sum(count for _, count in counts)
            status["bytes"] = sum(table.size() for table, count in counts if count)
            status["partitions"] = sum(1 for _, count in counts if count)
            status.update(backend.stats())
        return status


class _Syncer:
    """A thread that makes applied batches durable, one sync at a time, and hands them
    back through `done(batches, error)`."""

    def __init__(self, sync: Callable[[], None], done: Callable[[Any, Any], None]) -> None:
        self._sync = sync
        self._done = done
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="kvactors-group-commit", daemon=True).start()

    def sync(self, batches: Any) -> None:
        self._work.put(batches)

    def stop(self) -> None:
        self._work.put(None)

    def _run(self) -> None:
        while (batches := self._work.get()) is not None:
            try:
                self._sync()
            except Exception as error:  # handed back: the requests fail, the node serves
                self._done(batches, error)
            else:
                self._done(batches, None)


def _refuse_if_detached(snapshot: RingSnapshot) -> None:
    if snapshot.detached:
        raise UnavailableError(
            f"{snapshot.me} is joining and no member of its cluster has answered yet; "
            "retry, or ask another node"
        )


def _split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(envelope, body): the envelope runs to the first empty delimiter after the routing
    id (REQ sockets, proxies and REQ_CORRELATE add frames before it), else it is the
    routing id alone (a DEALER sending bare frames)."""
    if b"" not in frames[1:-1]:  # a delimiter has a body after it
        return frames[:1], frames[1:]
    delimiter = frames.index(b"", 1)
    return frames[: delimiter + 1], frames[delimiter + 1 :]


def _slot_count(request: Request) -> int:
    if request.op is Op.GET_MANY:
        return len(request.keys)
    if request.op is Op.PUT_MANY:
        return len(request.items)
    return 1


def _quorum(requested: int | None, default: int, n_val: int) -> int:
    """R or W for one request: the default is capped at the cluster's size; a quorum the
    client asked for is not, so a cluster too small for it answers `unavailable`."""
    if requested is None:
        return max(1, min(default, n_val))
    return requested


def _decoded_context(context: bytes | None) -> tuple[VectorClock, bytes] | None:
    if context is None:
        return None
    try:
        return decode_context(context), context
    except ValueError as exc:
        raise BadRequestError(f"context is not one a node made: {exc}") from None


def _coordinate_ops(
    call: rpc.Call, codec: Codec
) -> list[tuple[bytes, bytes | None, tuple[VectorClock, bytes] | None, int | None]]:
    """The writes of a `coordinate` call, held to the client limits."""
    raw_ops = call.args.get("ops")
    if not isinstance(raw_ops, list) or not 0 < len(raw_ops) <= rpc.MAX_CALL_OPS:
        raise BadRequestError("a coordinate call needs a list of ops")
    writes = []
    for raw in raw_ops:
        match raw:
            case ["write", bytes(key), bytes() | None as value, bytes() | None as context, w] if (
                len(key) <= codec.max_key_bytes and (w is None or (type(w) is int and w > 0))
            ):
                if value is not None:
                    value = rpc.checked_value(value, codec.max_value_bytes)
                writes.append((key, value, _decoded_context(context), w))
            case _:
                raise BadRequestError("malformed coordinate op")
    return writes


def _context_of(state: KeyState) -> bytes:
    # Even a key never written has a context (an empty clock): a first write that carries
    # it supersedes nothing, so two concurrent first writes are both kept.
    return state.encoded_context()


def _reply_for(request: Request, results: list[Any]) -> Reply:
    """The reply once every key has its outcome; a single key's error is the reply's."""
    op, request_id = request.op, request.request_id
    if op is Op.GET_MANY:
        return get_many_reply(request_id, [_get_item(request, r) for r in results])
    if op is Op.PUT_MANY:
        return put_many_reply(
            request_id,
            [item_failed(r) if isinstance(r, KVActorsError) else item_written() for r in results],
        )
    outcome = results[0]
    if type(outcome) is tuple:  # (value, context) of a key only this node holds
        value, context = outcome
        if value is None:
            return not_found_reply(request_id, context)
        return get_reply(request_id, value, context)
    if isinstance(outcome, KVActorsError):
        raise outcome
    if op is Op.GET:
        state = outcome.state
        context = _context_of(state)
        if request.siblings:
            return siblings_reply(request_id, _distinct_values(state), context)
        winner = state.winner
        if winner is None or winner.value is None:
            return not_found_reply(request_id, context)
        return get_reply(request_id, winner.value, context)
    if op is Op.PUT:
        return put_reply(request_id, conflict=outcome.siblings > 1)
    return delete_reply(request_id, outcome.existed)


def _distinct_values(state: KeyState) -> list[bytes]:
    """The live siblings' values, newest first, each value once: a write sent twice (a
    client's retry) makes two versions of one value, which readers need not see twice."""
    return list(dict.fromkeys(v.value for v in state.live if v.value is not None))


def _get_item(request: Request, outcome: Any) -> ItemResult:
    if type(outcome) is tuple:  # (value, context) of a key only this node holds
        value, context = outcome
        return item_not_found(context) if value is None else item_found(value, context)
    if isinstance(outcome, KVActorsError):
        return item_failed(outcome)
    assert isinstance(outcome, ReadResult)
    state = outcome.state
    context = _context_of(state)
    if request.siblings:
        return item_siblings(_distinct_values(state), context)
    winner = state.winner
    if winner is None or winner.value is None:
        return item_not_found(context)
    return item_found(winner.value, context)


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
        self._services.gateway = self._service
        logger.info("node %s serving on %s", self._config.name, self._transport.endpoint)

    def on_stop(self) -> None:
        self._close()

    def on_failure(self, *_exc_info: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self._services.gateway is self._service:
            self._services.gateway = None
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
