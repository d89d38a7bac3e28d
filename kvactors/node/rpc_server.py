"""The RPC server: calls from peer nodes, served by an op -> handler table.

`store` applies replica operations on this node's StoreServers, `coordinate` has this
node coordinate writes for a node holding no replica of their keys, `aae` answers an
anti-entropy exchange, `pull` serves a joining node's pull, `ping` names this node, and
ops registered on the `PeerNetwork` by other components (gossip) are served by their
handlers. A call that cannot be served gets an error answer, never a crash: anyone who
can reach the port can send one. Runs on the transport thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kvactors.config import NodeConfig
from kvactors.core.clocks import VectorClock
from kvactors.core.context import client_context
from kvactors.core.hashing import partition_of
from kvactors.core.ops import Coordinate, from_wire
from kvactors.core.placement import RingHolder
from kvactors.core.versions import KeyState, state_to_wire
from kvactors.errors import BadRequestError, InternalError, KVActorsError, UnavailableError
from kvactors.net import rpc
from kvactors.net.protocol import Codec
from kvactors.node.frontend import Frontend, quorum, refuse_if_detached
from kvactors.node.inflight import InFlight, Pending
from kvactors.node.local_batches import LocalBatches
from kvactors.node.peer_calls import COORDINATE
from kvactors.node.services import NodeServices
from kvactors.replication.anti_entropy import AAE
from kvactors.replication.anti_entropy import answer as answer_anti_entropy
from kvactors.replication.pull import PULL, serve_pull

__all__ = ["RpcServer"]

logger = logging.getLogger(__name__)

_Send = Callable[[list[bytes]], None]
_Handler = Callable[[bytes, rpc.Call], None]
_Write = tuple[bytes, bytes | None, tuple[VectorClock, bytes] | None, int | None]


class RpcServer:
    """Serves the RPC calls that reach this node's peer ROUTER."""

    def __init__(
        self,
        services: NodeServices,
        *,
        codec: Codec,
        inflight: InFlight,
        local: LocalBatches,
        frontend: Frontend,
        send: _Send,
        call_bytes: int,
    ) -> None:
        self._services = services
        self._config: NodeConfig = services.config
        self._ring: RingHolder = services.ring
        self._codec = codec
        self._inflight = inflight
        self._local = local
        self._frontend = frontend
        self._send = send
        self._call_bytes = call_bytes
        self.calls = 0
        self.refused = 0
        self.calls_in_other_formats = 0
        self._handlers: dict[str, _Handler] = {
            rpc.STORE: self._store,
            COORDINATE: self._coordinate,
            AAE: self._anti_entropy,
            PULL: self._pull,
            rpc.PING: self._ping,
        }

    def on_frames(self, frames: list[bytes]) -> None:
        """A message on the peer ROUTER: the caller's routing id, the RPC marker, then
        the call. Anything else is answered with an error, never served."""
        if len(frames) >= 3 and frames[1] == rpc.MARKER:
            self.on_call(frames[0], frames[2:])
            return
        self.refused += 1
        problem = BadRequestError("this is a peer endpoint: it serves node-to-node calls only")
        self._send([frames[0], rpc.MARKER, rpc.encode_error(None, problem)])

    def on_call(self, peer: bytes, body: list[bytes]) -> None:
        """The frames after the RPC marker, from the peer whose routing id is `peer`."""
        self.calls += 1
        call = rpc.decode_call(body)
        if isinstance(call, rpc.BadCall):
            if isinstance(call.error, rpc.RpcFormatError):
                self._foreign_call(call.error)
            self._send([peer, rpc.MARKER, rpc.encode_error(call.call_id, call.error)])
            return
        handler = self._handlers.get(call.op, self._registered)
        try:
            handler(peer, call)
        except KVActorsError as exc:
            self._send([peer, rpc.MARKER, rpc.encode_error(call.call_id, exc)])
        except Exception as exc:
            # Anyone can send the RPC marker: a fault in checking a call (a RecursionError
            # from repr() of a deeply nested op) must not end the transport thread, whose
            # restarts, a dozen within seconds, would stop the node.
            logger.exception("RPC call %r failed", call.op)
            failure = InternalError(f"{type(exc).__name__}: {exc}")
            self._send([peer, rpc.MARKER, rpc.encode_error(call.call_id, failure)])

    def _foreign_call(self, error: rpc.RpcFormatError) -> None:
        """A call in another RPC format: refused unread, counted, and logged the first
        time and then every thousandth (a peer of another release calls often)."""
        self.calls_in_other_formats += 1
        if self.calls_in_other_formats % 1000 == 1:
            logger.warning("refused %s (%d so far)", error, self.calls_in_other_formats)

    def _answer(self, peer: bytes, call: rpc.Call, result: Any) -> None:
        self._send([peer, rpc.MARKER, rpc.encode_result(call.call_id, result)])

    def _ping(self, peer: bytes, call: rpc.Call) -> None:
        self._answer(peer, call, {"node": self._config.name})

    def _store(self, peer: bytes, call: rpc.Call) -> None:
        """Replica operations from a coordinator elsewhere, on this node's StoreServers.

        Served here whoever owns the keys now: the caller chose this node by its own view
        of the ring, and sending them on could bounce them between views.
        """
        ops = rpc.store_ops(
            call,
            self._codec.max_key_bytes,
            self._codec.max_value_bytes,
            max_clock_skew=self._config.max_clock_skew,
        )
        inflight = self._inflight
        inflight.admit()
        pending = _StoreCall(
            self._send, peer, call.call_id, len(ops), inflight.deadline(call.timeout)
        )
        inflight.track(pending, own_timeout=True)
        target = _FillSlot(inflight, pending)
        queued, partitions = self._local.queued, self._config.partitions
        for slot, op in enumerate(ops):
            queued[partition_of(op.key, partitions)].append((target, slot, op))

    def _coordinate(self, peer: bytes, call: rpc.Call) -> None:
        """Writes a node that holds no replica of their keys asks this one to coordinate."""
        writes = _coordinate_ops(call, self._codec)
        inflight = self._inflight
        inflight.admit()
        snapshot = self._ring.current
        refuse_if_detached(snapshot)
        deadline = inflight.deadline(call.timeout)
        pending = _CoordinateCall(self._send, peer, call.call_id, len(writes), deadline)
        inflight.track(pending, own_timeout=True)
        for slot, (key, value, context, requested_w) in enumerate(writes):
            w = quorum(requested_w, self._config.write_quorum, snapshot.n_val)
            self._frontend.write(
                pending, slot, key, value, context, snapshot, w, requested_w, coordinate_here=True
            )

    def _anti_entropy(self, peer: bytes, call: rpc.Call) -> None:
        """A peer's anti-entropy exchange asks for this node's tree hashes or keys."""
        trees = self._services.trees
        if trees is None:
            raise UnavailableError(f"{self._config.name} runs no anti-entropy")
        self._answer(peer, call, answer_anti_entropy(trees, call.args))

    def _pull(self, peer: bytes, call: rpc.Call) -> None:
        """A joining node pulls keys of the partitions it takes over from this one."""
        storage = self._services.storage
        if storage is None:
            raise UnavailableError(f"{self._config.name} has no storage open")
        answer = serve_pull(storage, self._config.partitions, call.args, self._call_bytes)
        self._answer(peer, call, answer)

    def _registered(self, peer: bytes, call: rpc.Call) -> None:
        """An op a component serves (gossip, ...): its handler answers without blocking."""
        handler = self._services.network.handler_for(call.op)
        if handler is None:
            raise BadRequestError(f"unknown RPC op {call.op!r}")
        self._answer(peer, call, handler(call.args))


class _Call(Pending):
    """A call from a peer, answered on the ROUTER with the call's id."""

    __slots__ = ("call_id", "peer", "send")

    def __init__(self, send: _Send, peer: bytes, call_id: int, slots: int, deadline: float):
        super().__init__(slots, deadline)
        self.send = send
        self.peer = peer
        self.call_id = call_id

    def results_to_wire(self) -> list[Any]:
        raise NotImplementedError

    def answer(self) -> None:
        payload = rpc.encode_result(self.call_id, {"results": self.results_to_wire()})
        self.send([self.peer, rpc.MARKER, payload])

    def refuse(self, error: KVActorsError) -> None:
        self.send([self.peer, rpc.MARKER, rpc.encode_error(self.call_id, error)])


class _StoreCall(_Call):
    """A `store` call: replica operations on this node's StoreServers."""

    __slots__ = ()

    def results_to_wire(self) -> list[Any]:
        return [
            state_to_wire(result) if type(result) is KeyState else result for result in self.results
        ]


class _CoordinateCall(_Call):
    """A `coordinate` call: writes this node coordinates for a peer."""

    __slots__ = ()

    def results_to_wire(self) -> list[Any]:
        return [
            ["error", outcome.code, str(outcome)[:1000]]
            if isinstance(outcome, KVActorsError)
            else ["ok", outcome.existed, outcome.siblings]
            for outcome in self.results
        ]


class _FillSlot:
    """The ReplicaTarget of a `store` call's ops: each answer fills its op's slot."""

    __slots__ = ("inflight", "pending")

    def __init__(self, inflight: InFlight, pending: Pending) -> None:
        self.inflight = inflight
        self.pending = pending

    def replica_done(self, tag: Any, result: Any) -> None:
        self.inflight.fill(self.pending, tag, result)

    def replica_failed(self, tag: Any, error: KVActorsError) -> None:
        self.inflight.fail(self.pending, error)


def _coordinate_ops(call: rpc.Call, codec: Codec) -> list[_Write]:
    """The writes of a `coordinate` call, held to the client limits (a client's write
    forwarded by a node that holds no replica of its key)."""
    raw_ops = call.args.get("ops")
    if not isinstance(raw_ops, list) or not 0 < len(raw_ops) <= rpc.MAX_CALL_OPS:
        raise BadRequestError("a coordinate call needs a list of ops")
    max_value_bytes = codec.max_value_bytes

    def check_value(value: bytes) -> bytes:
        return rpc.checked_value(value, max_value_bytes)

    writes = []
    for index, raw in enumerate(raw_ops):
        op = from_wire(raw, codec.max_key_bytes, check_value)
        if not isinstance(op, Coordinate):
            raise BadRequestError(
                f"coordinate op {index} is a {raw[0]} op: a coordinate call takes write ops "
                "only (replica ops go in a store call)"
            )
        writes.append((op.key, op.value, client_context(op.context), op.w))
    return writes
