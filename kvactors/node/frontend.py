"""The frontend: client requests, from frames to quorum operations to replies.

A client frame is split from its envelope, decoded and validated (`protocol.Codec`);
bad input is answered at once. Each key of a request becomes a quorum operation on the
key's replicas (kvactors.replication.coordinator), or, where this node holds the key's
only copy, one op for its own StoreServer. When every key has its outcome, the reply
goes out with the request's envelope (`reply_for` shapes it, `Replies` sends it). The
embedded client's requests (`submit`) take the same path and are answered through a
Future. A network request is admitted against its connection's bounds as well as the
node's (`InFlight.admit`): one connection cannot take the whole in-flight budget, nor
have more work done while the node holds too many unread replies for it. Runs on the
transport thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from kvactors.config import NodeConfig
from kvactors.core.clocks import VectorClock
from kvactors.core.context import client_context
from kvactors.core.hashing import partition_of
from kvactors.core.membership import Leave, RemoveResult
from kvactors.core.ops import ReadKey, ReadWinner, StoreOp, WriteKey, Written
from kvactors.core.placement import RingHolder, RingSnapshot
from kvactors.core.versions import KeyState
from kvactors.errors import (
    BadRequestError,
    ForbiddenError,
    InternalError,
    KVActorsError,
    OverloadedError,
    TooLargeError,
    UnavailableError,
)
from kvactors.net.certs import Certificate, role_allows
from kvactors.net.protocol import (
    Codec,
    ItemResult,
    Op,
    ProtocolError,
    Reply,
    Request,
    WireFormat,
)
from kvactors.net.replies import (
    delete_reply,
    encode_error,
    encode_reply,
    get_many_reply,
    item_failed,
    item_written,
    ping_reply,
    put_many_reply,
    put_reply,
    status_reply,
)
from kvactors.net.rpc import MARKER
from kvactors.node.channel import NodeChannel
from kvactors.node.inflight import SLOW_CONNECTION, InFlight, Pending
from kvactors.node.local_batches import LocalBatches
from kvactors.replication.coordinator import (
    KeyOutcome,
    ReadOperation,
    ReadResult,
    WriteOperation,
    WriteResult,
)

__all__ = ["Frontend", "Replies", "reply_for"]

logger = logging.getLogger(__name__)

Context = tuple[VectorClock, bytes] | None
"""A write's causal context: decoded, and as the client sent it."""

Gate = Callable[[str], ForbiddenError | None]
"""A secure node's check of one client request: its op -> the refusal, or None."""


def _gate(sender: Certificate | None) -> Gate:
    if sender is None:
        return lambda _op: ForbiddenError("this key is no longer trusted by the node")
    role, name = sender.role, sender.name

    def gate(op: str) -> ForbiddenError | None:
        if role_allows(role, op):
            return None
        return ForbiddenError(f"key {name!r} has role {role.value}, which may not {op}")

    return gate


class Frontend:
    """Client requests (network and embedded) to quorum operations and back."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        ring: RingHolder,
        codec: Codec,
        inflight: InFlight,
        replies: Replies,
        channel: NodeChannel,
        local: LocalBatches,
        status: Callable[[], dict[str, Any]],
        tell_gossip: Callable[[object], None],
        remove_member: Callable[[str, Callable[[RemoveResult], None]], None],
    ) -> None:
        self._config = config
        self._me = config.name
        self._alone = (config.name,)  # the replica set of a key only this node holds
        self._partitions = config.partitions
        self._ring = ring
        self._codec = codec
        self._inflight = inflight
        self._replies = replies
        self._channel = channel
        # A key only this node holds skips the quorum machinery: its op goes straight
        # to the local batch.
        self._local = local
        self._status = status
        self._tell_gossip = tell_gossip
        self._remove_member = remove_member
        self.requests = 0

    # -- from the network --------------------------------------------------------------

    def on_authorized_frames(self, frames: list[bytes], sender: Certificate | None) -> None:
        """A client's frames on a secure node, with the certificate its key has in the
        live trust set now (None: no longer trusted): each request is checked against
        that certificate's role, never against anything the frames say. Its requests in
        flight count against its key, whichever of its connections they come on."""
        account = None if sender is None else b"key:" + sender.public_key
        self.on_frames(frames, _gate(sender), account)

    def on_frames(
        self, frames: list[bytes], gate: Gate | None = None, account: bytes | None = None
    ) -> None:
        """A client's frames: [routing id, (delimiter,) request]. A secure node passes
        the sender's `gate`, which refuses the ops its role may not ask."""
        # The common shapes first: a DEALER's [id, request] and a REQ's [id, b"", request].
        count = len(frames)
        if count == 2:
            envelope, body = frames[:1], frames[1:]
        elif count == 3 and not frames[1]:
            envelope, body = frames[:2], frames[2:]
        elif frames[1] == MARKER:
            self.requests += 1
            self._refuse_call(frames[:1])
            return
        else:
            envelope, body = _split_envelope(frames)
        self.requests += 1
        if len(body) != 1:
            self._refuse_frames(envelope, body)
            return
        try:
            request = self._codec.decode_request(body[0])
        except ProtocolError as exc:
            self._replies.error(envelope, exc, exc.request_id, exc.fmt, account)
            return
        if gate is not None:
            refusal = gate(request.op)
            if refusal is not None:
                self._replies.error(envelope, refusal, request.request_id, request.fmt, account)
                return
        try:
            self._serve(envelope, request, account)
        except KVActorsError as exc:
            self._replies.error(envelope, exc, request.request_id, request.fmt, account)
        except Exception as exc:
            logger.exception("request %r failed", request.op)
            error = InternalError(f"{type(exc).__name__}: {exc}")
            self._replies.error(envelope, error, request.request_id, request.fmt, account)

    def _refuse_call(self, envelope: list[bytes]) -> None:
        """A node-to-node call (the RPC marker): never served here, whatever it carries."""
        problem = BadRequestError(
            "this is a client endpoint: node-to-node calls go to the peer endpoint"
        )
        self._replies.error(envelope, problem, None, WireFormat.MSGPACK)

    def _refuse_frames(self, envelope: list[bytes], body: list[bytes]) -> None:
        # protocol.py's rule, applied to the first frame: JSON if `{` comes first after
        # ASCII whitespace (a JSON client may well send " {...}").
        first = body[0].lstrip(b" \t\r\n")[:1] if body else b""
        fmt = WireFormat.JSON if first == b"{" else WireFormat.MSGPACK
        problem = BadRequestError(f"a request is exactly one frame, got {len(body)}")
        self._replies.error(envelope, problem, None, fmt)

    def _serve(self, envelope: list[bytes], request: Request, account: bytes | None) -> None:
        op = request.op
        if op is Op.PING:
            self._answer(envelope, request, ping_reply(request.request_id))
        elif op is Op.STATUS:
            self._answer(envelope, request, status_reply(request.request_id, self._status()))
        elif op is Op.LEAVE:
            self._tell_gossip(Leave())
            self._answer(envelope, request, ping_reply(request.request_id))
        elif op is Op.REMOVE:
            self._remove(envelope, request)
        else:
            # Its connection's bounds too: requests in flight (its key's, when secure),
            # and unread replies held.
            self._inflight.admit(envelope[0], account)
            slots, deadline = _slots(request), self._deadline(request)
            pending = _ClientRequest(
                self._replies, envelope, request, slots, deadline, account=account
            )
            self.start(request, pending)

    def _remove(self, envelope: list[bytes], request: Request) -> None:
        """An admin's `remove`: answered when the gossip protocol has decided."""

        def answer(result: RemoveResult) -> None:
            if result.removed:
                self._answer(envelope, request, ping_reply(request.request_id))
            else:
                refusal = BadRequestError(f"cannot remove: {result.describe()}")
                self._replies.error(envelope, refusal, request.request_id, request.fmt)

        self._remove_member(request.key.decode("utf-8"), answer)

    def _answer(self, envelope: list[bytes], request: Request, reply: Reply) -> None:
        self._replies.send([*envelope, encode_reply(reply, request.fmt)], None)

    # -- from the embedded client ---------------------------------------------------------

    def submit(self, request: Request, future: Future[Reply]) -> None:
        """Coordinate a key request of the embedded client (on the transport thread)."""
        try:
            self._inflight.admit()
            slots, deadline = _slots(request), self._deadline(request)
            self.start(request, _LocalRequest(future, request, slots, deadline))
        except KVActorsError as error:
            future.set_exception(error)

    # -- key operations ---------------------------------------------------------------------

    def _deadline(self, request: Request) -> float:
        timeout_ms = request.timeout_ms
        return self._inflight.deadline(None if timeout_ms is None else timeout_ms / 1000)

    def start(self, request: Request, pending: Pending) -> None:
        """Start one quorum operation per key of the admitted `request`; `pending`, with a
        slot per key, hears their outcomes."""
        own_timeout = request.timeout_ms is not None
        snapshot = self._ring.current
        refuse_if_detached(snapshot)
        op = request.op
        if op is Op.GET or op is Op.GET_MANY:
            keys = (request.key,) if op is Op.GET else request.keys
            r = quorum(request.r, self._config.read_quorum, snapshot.n_val)
            self._inflight.track(pending, own_timeout)
            for slot, key in enumerate(keys):
                self.read(pending, slot, key, snapshot, r, request.siblings)
            return
        # Every context is checked before anything starts: a bad one refuses the request
        # as a whole, with nothing written.
        writes: list[tuple[bytes, bytes | None, Context]]
        if op is Op.PUT_MANY:
            writes = [
                (item.key, item.value_bytes, client_context(item.context)) for item in request.items
            ]
        else:
            value = request.value_bytes if op is Op.PUT else None
            writes = [(request.key, value, client_context(request.context))]
        w = quorum(request.w, self._config.write_quorum, snapshot.n_val)
        self._inflight.track(pending, own_timeout)
        for slot, (key, value, context) in enumerate(writes):
            self.write(pending, slot, key, value, context, snapshot, w, request.w)

    def read(  # noqa: PLR0917 - one key's fields, named at every call
        self,
        pending: Pending,
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
            target = _SoleRead(self._inflight, pending, slot)
            self._local.queued[partition].append((target, None, op))
            return
        ReadOperation(
            self._channel,
            key,
            partition=partition,
            replicas=replicas,
            required=r,
            deliver=self._slot_sink(pending, slot),
        ).start()

    def write(  # noqa: PLR0917 - one key's fields, named at every call
        self,
        pending: Pending,
        slot: int,
        key: bytes,
        value: bytes | None,
        context: Context,
        snapshot: RingSnapshot,
        w: int,
        requested_w: int | None,
        *,
        coordinate_here: bool = False,
    ) -> None:
        """One key's write; with `coordinate_here` (a peer asked), this node coordinates
        it even if it holds no replica."""
        partition = partition_of(key, self._partitions)
        replicas = snapshot.replicas(partition)
        if self._me not in replicas and not coordinate_here:
            replicas = snapshot.forward_order(partition)
        next_owners = snapshot.next_owners(partition)
        if w == 1 and replicas == self._alone and not next_owners:
            write = WriteKey(key, value, None if context is None else context[0])
            target = _SoleWrite(self._inflight, pending, slot)
            self._local.queued[partition].append((target, None, write))
            return
        WriteOperation(
            self._channel,
            key,
            partition=partition,
            value=value,
            context=context,
            replicas=replicas,
            required=w,
            deliver=self._slot_sink(pending, slot),
            requested_w=requested_w,
            coordinate_here=coordinate_here,
            hint_for=snapshot.missing_replicas(partition),
            next_owners=next_owners,
        ).start()

    def _slot_sink(self, pending: Pending, slot: int) -> Callable[[KeyOutcome], None]:
        fill = self._inflight.fill
        return lambda outcome: fill(pending, slot, outcome)


class _ClientRequest(Pending):
    """A request from a network client: answered on the ROUTER with its envelope."""

    __slots__ = ("account", "envelope", "replies", "request")

    def __init__(
        self,
        replies: Replies,
        envelope: list[bytes],
        request: Request,
        slots: int,
        deadline: float,
        *,
        account: bytes | None = None,
    ) -> None:
        # The base fields set here, not through super(): one call less per request.
        self.results: list[Any] = [None] * slots
        self.missing = slots
        self.deadline = deadline
        self.done = False
        # Counted against its connection (its routing id), or its key's account; so
        # is what the node holds of its reply, if the client is slow to read it.
        self.connection = envelope[0] if account is None else account
        self.account = account
        self.replies = replies
        self.envelope = envelope
        self.request = request

    def answer(self) -> None:
        request = self.request
        try:
            reply = reply_for(request, self.results, self.replies.max_frame_bytes)
        except KVActorsError as error:
            self.refuse(error)
            return
        frames = [*self.envelope, encode_reply(reply, request.fmt)]
        if self.replies.send(frames, self.account) is False:
            # Dropped: the node holds too many unread replies for this connection. A
            # short refusal in its place (held if it fits) tells the client so.
            self.refuse(OverloadedError(SLOW_CONNECTION))

    def refuse(self, error: KVActorsError) -> None:
        request = self.request
        self.replies.error(self.envelope, error, request.request_id, request.fmt, self.account)


class _LocalRequest(Pending):
    """A request from the embedded client of this process: answered through a Future."""

    __slots__ = ("future", "request")

    def __init__(self, future: Future[Reply], request: Request, slots: int, deadline: float):
        super().__init__(slots, deadline)
        self.request = request
        self.future = future

    def answer(self) -> None:
        try:
            self.future.set_result(reply_for(self.request, self.results))
        except KVActorsError as error:
            self.future.set_exception(error)

    def refuse(self, error: KVActorsError) -> None:
        self.future.set_exception(error)


class _SoleRead:
    """The target of a read whose only replica is this node: its state is the answer."""

    __slots__ = ("inflight", "pending", "slot")

    def __init__(self, inflight: InFlight, pending: Pending, slot: int) -> None:
        self.inflight = inflight
        self.pending = pending
        self.slot = slot

    def replica_done(self, tag: Any, result: Any) -> None:
        # A KeyState (ReadKey), or a (value, context) pair (ReadWinner): both fill the slot.
        outcome = ReadResult(result) if type(result) is KeyState else result
        self.inflight.fill(self.pending, self.slot, outcome)

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        self.inflight.fill(self.pending, self.slot, error)


class _SoleWrite(_SoleRead):
    """The target of a write whose only replica is this node."""

    __slots__ = ()

    def replica_done(self, tag: Any, result: Any) -> None:
        written: Written = result
        outcome = WriteResult(written.existed, len(written.state.live_values()))
        self.inflight.fill(self.pending, self.slot, outcome)


def _slots(request: Request) -> int:
    """A request's keys: one result slot each."""
    op = request.op
    if op is Op.GET_MANY:
        return len(request.keys)
    if op is Op.PUT_MANY:
        return len(request.items)
    return 1


def refuse_if_detached(snapshot: RingSnapshot) -> None:
    if snapshot.detached:
        raise UnavailableError(
            f"{snapshot.me} is joining and no member of its cluster has answered yet; "
            "retry, or ask another node"
        )


def quorum(requested: int | None, default: int, n_val: int) -> int:
    """R or W for one request: the default is capped at the cluster's size; a quorum the
    client asked for is not, so a cluster too small for it answers `unavailable`."""
    if requested is None:
        return max(1, min(default, n_val))
    return requested


def _split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(envelope, body): the envelope runs to the first empty delimiter after the routing
    id (REQ sockets, proxies and REQ_CORRELATE add frames before it), else it is the
    routing id alone (a DEALER sending bare frames)."""
    if b"" not in frames[1:-1]:  # a delimiter has a body after it
        return frames[:1], frames[1:]
    delimiter = frames.index(b"", 1)
    return frames[: delimiter + 1], frames[delimiter + 1 :]


# -- replies ---------------------------------------------------------------------------


SendToClient = Callable[[list[bytes], bytes | None], bool | None]
"""Sends a reply's frames, counted against an account (a secure client's key; None:
its connection's own); False when it dropped the reply because the client does not read."""


class Replies:
    """Sends frames to clients (through `send`, the transport's), counting errors."""

    __slots__ = ("errors", "max_frame_bytes", "send")

    def __init__(self, send: SendToClient, max_frame_bytes: int | None = None) -> None:
        self.send = send
        self.errors = 0
        self.max_frame_bytes = max_frame_bytes
        """The frame a reply must fit (a get_many's is cut to it); None: no cut."""

    def reply(self, envelope: list[bytes], request: Request, reply: Reply) -> None:
        self.send([*envelope, encode_reply(reply, request.fmt)], None)

    def error(
        self,
        envelope: list[bytes],
        error: KVActorsError,
        request_id: Any,
        fmt: WireFormat,
        account: bytes | None = None,
    ) -> None:
        self.errors += 1
        self.send([*envelope, encode_error(error, request_id, fmt)], account)


REPLY_FULL = (
    "the reply is full: this key's value did not fit the frame with those before it; "
    "ask for it again in another request"
)
_ITEM_OVERHEAD = 64
"""Bytes an item of a get_many reply takes besides its value, siblings and context
(generous: map keys, type tags, lengths)."""


def reply_for(request: Request, results: list[Any], max_frame_bytes: int | None = None) -> Reply:
    """The reply once every key has its outcome; a single key's error is the reply's.
    A get_many's items past what fits `max_frame_bytes` are answered `too_large`."""
    op, request_id = request.op, request.request_id
    if op is Op.GET_MANY:
        siblings = request.siblings
        items = [
            item_failed(r)
            if isinstance(r, KVActorsError)
            else ItemResult(None, *_read(r, siblings))
            for r in results
        ]
        if max_frame_bytes is not None:
            items = _fit_frame(items, max_frame_bytes, request.fmt)
        return get_many_reply(request_id, items)
    if op is Op.PUT_MANY:
        return put_many_reply(
            request_id,
            [item_failed(r) if isinstance(r, KVActorsError) else item_written() for r in results],
        )
    return _single_reply(request, results)


def _fit_frame(items: list[ItemResult], max_frame_bytes: int, fmt: WireFormat) -> list[ItemResult]:
    """The items that fit one reply frame, in order; each after them is answered
    `too_large` (REPLY_FULL), for the client to ask again. The first always fits: a frame
    holds the largest value. JSON's budget is a sixth of the frame (a byte of a string
    may take six as an escape)."""
    budget = max_frame_bytes // 6 if fmt is WireFormat.JSON else max_frame_bytes - 4096
    used = 0
    for index, item in enumerate(items):
        used += _ITEM_OVERHEAD + len(item.value_bytes or b"") + len(item.context or b"")
        if item.siblings:
            used += sum(map(len, item.siblings))
        if used > budget and index > 0:
            full = item_failed(TooLargeError(REPLY_FULL))
            return [*items[:index], *([full] * (len(items) - index))]
    return items


def _single_reply(request: Request, results: list[Any]) -> Reply:
    """The reply to a request of one key: its outcome, or its error raised."""
    op, request_id = request.op, request.request_id
    outcome = results[0]
    if isinstance(outcome, KVActorsError):
        raise outcome
    if op is Op.GET:
        if type(outcome) is tuple:  # a key only this node holds: (value, context)
            value, context = outcome
            return Reply(request_id, value is not None, value, None, context)
        return Reply(request_id, *_read(outcome, request.siblings))
    if op is Op.PUT:
        return put_reply(request_id, conflict=outcome.siblings > 1)
    return delete_reply(request_id, outcome.existed)


_ReadFields = tuple[bool, bytes | None, tuple[bytes, ...] | None, bytes]
"""(found, value, siblings, context): the fields a get's reply and a get_many's item share."""


def _read(outcome: Any, siblings: bool) -> _ReadFields:
    """One key's read: a `ReadResult`, or the (value, context) pair of a key only this
    node holds."""
    if type(outcome) is tuple:
        value, context = outcome
        return value is not None, value, None, context
    assert isinstance(outcome, ReadResult)
    state: KeyState = outcome.state
    # Even a key never written has a context (an empty clock): a first write that carries
    # it supersedes nothing, so two concurrent first writes are both kept.
    context = state.encoded_context()
    if siblings:
        values = tuple(state.live_values())
        return bool(values), None, values, context
    winner = state.winner
    if winner is None or winner.value is None:
        return False, None, None, context
    return True, winner.value, None, context
