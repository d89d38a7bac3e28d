"""The frontend: client requests, from frames to quorum operations to replies.

A client frame is split from its envelope, decoded and validated (`protocol.Codec`);
bad input is answered at once. Each key of a request becomes a quorum operation on the
key's replicas (kvactors.replication.coordinator), or, where this node holds the key's
only copy, one op for its own StoreServer. When every key has its outcome, the reply
goes out with the request's envelope (`reply_for` shapes it, `Replies` sends it). A
request of one key (a get, put or delete: nearly every request) is one object from
admission to reply, which is also the replica target of its op where the only copy is
here; what the ring says of a partition is asked once per ring snapshot (`Plan`). The
embedded client's requests (`submit`) take the general path and are answered through a
Future. A network request is admitted against its connection's bounds as well as the
node's (`InFlight.admit`): one connection cannot take the whole in-flight budget, nor
have more work done while the node holds too many unread replies for it. Runs on the
transport thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Final

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
    UnavailableError,
)
from kvactors.net.certs import Certificate, role_allows
from kvactors.net.protocol import (
    Codec,
    Op,
    ProtocolError,
    Reply,
    Request,
    WireFormat,
)
from kvactors.net.replies import (
    Replies,
    encode_delete_reply,
    encode_get_reply,
    encode_put_reply,
    encode_reply,
    ping_reply,
    status_reply,
)
from kvactors.net.rpc import MARKER
from kvactors.node.channel import NodeChannel
from kvactors.node.inflight import SLOW_CONNECTION, InFlight, Pending
from kvactors.node.local_batches import LocalBatches
from kvactors.node.reply_shapes import REPLY_FULL, read_fields, reply_for
from kvactors.replication.coordinator import (
    KeyOutcome,
    ReadOperation,
    ReadResult,
    WriteOperation,
    WriteResult,
)

__all__ = ["REPLY_FULL", "Frontend", "Replies", "reply_for"]

logger = logging.getLogger(__name__)

Context = tuple[VectorClock, bytes] | None
"""A write's causal context: decoded, and as the client sent it."""

Gate = Callable[[str], ForbiddenError | None]
"""A secure node's check of one client request: its op -> the refusal, or None."""

Plan = tuple[tuple[str, ...], bool, bool, tuple[str, ...], tuple[str, ...], tuple[str, ...]]
"""What a key's operation asks of the ring about its partition, asked once per ring
snapshot: (replicas, sole_read, sole_write, write_replicas, next_owners, missing).
`sole_read`: this node is its only replica; `sole_write`: and no joining member takes
its writes too. `write_replicas`: where a write goes from here (`forward_order` when
this node is no replica). `missing`: the dead members a write keeps hints for."""

# Enum members fetched once: read on every request.
_GET: Final = Op.GET
_PUT: Final = Op.PUT
_DELETE: Final = Op.DELETE
# Builds a NamedTuple op from the tuple of its fields: its generated __new__ is a Python
# function, one call more per request.
_new_op: Final = tuple.__new__


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
        # Per partition, its Plan under the snapshot `_planned`, made when first asked;
        # and that snapshot's default quorums.
        self._planned: RingSnapshot | None = None
        self._plans: list[Plan | None] = []
        self._default_r = self._default_w = 1
        # The last secure sender's certificate, and its gate and account.
        self._sender: Certificate | None = None
        self._sender_gate: Gate | None = None
        self._sender_account: bytes | None = None

    # -- from the network --------------------------------------------------------------

    def on_authorized_frames(self, frames: list[bytes], sender: Certificate | None) -> None:
        """A client's frames on a secure node, with the certificate its key has in the
        live trust set now (None: no longer trusted): each request is checked against
        that certificate's role, never against anything the frames say. Its requests in
        flight count against its key, whichever of its connections they come on."""
        if sender is not self._sender or self._sender_gate is None:
            # A certificate is immutable, and the trust set hands out the same object
            # for a key until it is reloaded: the last sender's gate and account serve
            # its next message too (a burst from one client), with no closure made.
            self._sender = sender
            self._sender_gate = _gate(sender)
            self._sender_account = None if sender is None else b"key:" + sender.public_key
        self.on_frames(frames, self._sender_gate, self._sender_account)

    def on_frames(
        self, frames: list[bytes], gate: Gate | None = None, account: bytes | None = None
    ) -> None:
        """A client's frames: [routing id, (delimiter,) request]. A secure node passes
        the sender's `gate`, which refuses the ops its role may not ask."""
        # The common shapes first: a DEALER's [id, request] and a REQ's [id, b"", request].
        self.requests += 1
        count = len(frames)
        if count == 2:
            envelope, frame = frames[:1], frames[1]
        elif count == 3 and not frames[1]:
            envelope, frame = frames[:2], frames[2]
        elif frames[1] == MARKER:
            self._refuse_call(frames[:1])
            return
        else:
            envelope, body = _split_envelope(frames)
            if len(body) != 1:
                self._refuse_frames(envelope, body)
                return
            frame = body[0]
        try:
            request = self._codec.decode_request(frame)
        except ProtocolError as exc:
            self._replies.error(envelope, exc, exc.request_id, exc.fmt, account)
            return
        op = request.op
        if gate is not None:
            refusal = gate(op)
            if refusal is not None:
                self._replies.error(envelope, refusal, request.request_id, request.fmt, account)
                return
        try:
            if op is _PUT or op is _GET or op is _DELETE:
                self._serve_key(envelope, request, account)
            else:
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

    def _serve_key(self, envelope: list[bytes], request: Request, account: bytes | None) -> None:
        """A get, put or delete: one key, one object (`_KeyRequest`) that is admitted,
        waits, and answers; it is the replica target itself where the only copy is here,
        else the sink of the key's quorum operation."""
        snapshot = self._ring.current
        plans = self._plans if snapshot is self._planned else self._replan(snapshot)
        if snapshot.detached:
            refuse_if_detached(snapshot)
        key = request.key
        partition = partition_of(key, self._partitions)
        plan = plans[partition] or self._plan(snapshot, partition)
        timeout_ms = request.timeout_ms
        timeout = None if timeout_ms is None else timeout_ms / 1000
        op = request.op
        if op is _GET:
            pending: _KeyRequest = _KeyGet(
                self._inflight, self._replies, envelope, request, account
            )
            self._inflight.enter(pending, envelope[0], account, timeout)
            r = request.r or self._default_r
            if r == 1 and plan[1]:
                siblings = request.siblings
                read = _new_op(ReadKey, (key,)) if siblings else _new_op(ReadWinner, (key,))
                self._local.queued[partition].append((pending, None, read))
                return
            ReadOperation(
                self._channel,
                key,
                partition=partition,
                replicas=plan[0],
                required=r,
                deliver=pending.deliver,
            ).start()
            return
        # The context is checked before anything starts: a bad one refuses the request.
        context = request.context
        checked = None if context is None else client_context(context)
        if op is _PUT:
            value: bytes | None = request.value_bytes
            pending = _KeyPut(self._inflight, self._replies, envelope, request, account)
        else:
            value = None
            pending = _KeyDelete(self._inflight, self._replies, envelope, request, account)
        self._inflight.enter(pending, envelope[0], account, timeout)
        requested_w = request.w
        w = requested_w or self._default_w
        if w == 1 and plan[2]:
            write = _new_op(WriteKey, (key, value, None if checked is None else checked[0]))
            self._local.queued[partition].append((pending, None, write))
            return
        WriteOperation(
            self._channel,
            key,
            partition=partition,
            value=value,
            context=checked,
            replicas=plan[3],
            required=w,
            deliver=pending.deliver,
            requested_w=requested_w,
            hint_for=plan[5],
            next_owners=plan[4],
        ).start()

    def _replan(self, snapshot: RingSnapshot) -> list[Plan | None]:
        """A new ring snapshot: the plans of the last one are dropped."""
        self._planned = snapshot
        plans: list[Plan | None] = [None] * self._partitions
        self._plans = plans
        config = self._config
        self._default_r = quorum(None, config.read_quorum, snapshot.n_val)
        self._default_w = quorum(None, config.write_quorum, snapshot.n_val)
        return plans

    def _plan(self, snapshot: RingSnapshot, partition: int) -> Plan:
        """The partition's Plan under `snapshot` (the planned one), kept for the next key."""
        replicas = snapshot.replicas(partition)
        next_owners = snapshot.next_owners(partition)
        sole = replicas == self._alone
        plan = (
            replicas,
            sole,
            sole and not next_owners,
            replicas if self._me in replicas else snapshot.forward_order(partition),
            next_owners,
            snapshot.missing_replicas(partition),
        )
        self._plans[partition] = plan
        return plan

    def _plan_of(self, snapshot: RingSnapshot, partition: int) -> Plan:
        plans = self._plans if snapshot is self._planned else self._replan(snapshot)
        return plans[partition] or self._plan(snapshot, partition)

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
        plan = self._plan_of(snapshot, partition)
        if r == 1 and plan[1]:
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
            replicas=plan[0],
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
        plan = self._plan_of(snapshot, partition)
        if w == 1 and plan[2]:
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
            # Coordinated here for a peer: the key's replicas, wherever this node is.
            replicas=plan[0] if coordinate_here else plan[3],
            required=w,
            deliver=self._slot_sink(pending, slot),
            requested_w=requested_w,
            coordinate_here=coordinate_here,
            hint_for=plan[5],
            next_owners=plan[4],
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
        self.answer_with(self.results)

    def answer_with(self, results: Sequence[Any]) -> None:
        """Reply with the keys' `results` (the request's own, or a single key's)."""
        request = self.request
        try:
            reply = reply_for(request, results, self.replies.max_frame_bytes)
        except KVActorsError as error:
            self.refuse(error)
            return
        self.send(encode_reply(reply, request.fmt))

    def send(self, frame: bytes) -> None:
        """Send the reply `frame` with the request's envelope."""
        if self.replies.send([*self.envelope, frame], self.account) is False:
            # Dropped: the node holds too many unread replies for this connection. A
            # short refusal in its place (held if it fits) tells the client so.
            self.refuse(OverloadedError(SLOW_CONNECTION))

    def refuse(self, error: KVActorsError) -> None:
        request = self.request
        self.replies.error(self.envelope, error, request.request_id, request.fmt, self.account)


class _KeyRequest(_ClientRequest):
    """A network client's request of one key (get, put, delete): admitted, tracked and
    answered as itself, with no result slots. Where the key's only copy is here, it is
    the replica target of its op (`replica_done`, `replica_failed`); otherwise its
    quorum operation delivers to it (`deliver`)."""

    __slots__ = ("inflight",)

    def __init__(
        self,
        inflight: InFlight,
        replies: Replies,
        envelope: list[bytes],
        request: Request,
        account: bytes | None,
    ) -> None:
        # Only what a request of one key uses (no results, no slots); InFlight.enter
        # sets the deadline.
        self.done = False
        self.connection = envelope[0] if account is None else account
        self.account = account
        self.replies = replies
        self.envelope = envelope
        self.request = request
        self.inflight = inflight

    def deliver(self, outcome: KeyOutcome) -> None:
        """The outcome of the key's quorum operation."""
        if not self.done:
            self.inflight.settle(self)
            self.answer_with((outcome,))

    def replica_done(self, tag: Any, result: Any) -> None:
        raise NotImplementedError

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        if not self.done:
            self.inflight.settle(self)
            self.refuse(error)


class _KeyGet(_KeyRequest):
    __slots__ = ()

    def replica_done(self, tag: Any, result: Any) -> None:
        if self.done:
            return
        self.inflight.settle(self)
        if type(result) is KeyState:  # ReadKey's: siblings were asked for
            self.answer_with((ReadResult(result),))
            return
        value, context = result  # ReadWinner's
        request = self.request
        self.send(encode_get_reply(request.request_id, value, context, request.fmt))

    def deliver(self, outcome: KeyOutcome) -> None:
        request = self.request
        if request.siblings or type(outcome) is not ReadResult:
            super().deliver(outcome)  # siblings, or an error
        elif not self.done:
            self.inflight.settle(self)
            _, value, _, context = read_fields(outcome, False)
            self.send(encode_get_reply(request.request_id, value, context, request.fmt))


class _KeyPut(_KeyRequest):
    __slots__ = ()

    def replica_done(self, tag: Any, result: Any) -> None:
        written: Written = result
        self._answer(len(written.state.live_values()) > 1)

    def deliver(self, outcome: KeyOutcome) -> None:
        if type(outcome) is not WriteResult:
            super().deliver(outcome)  # an error
        else:
            self._answer(outcome.siblings > 1)

    def _answer(self, conflict: bool) -> None:
        if not self.done:
            self.inflight.settle(self)
            request = self.request
            self.send(encode_put_reply(request.request_id, conflict, request.fmt))


class _KeyDelete(_KeyRequest):
    __slots__ = ()

    def replica_done(self, tag: Any, result: Any) -> None:
        written: Written = result
        self._answer(written.existed)

    def deliver(self, outcome: KeyOutcome) -> None:
        if type(outcome) is not WriteResult:
            super().deliver(outcome)  # an error
        else:
            self._answer(outcome.existed)

    def _answer(self, existed: bool) -> None:
        if not self.done:
            self.inflight.settle(self)
            request = self.request
            self.send(encode_delete_reply(request.request_id, existed, request.fmt))


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
