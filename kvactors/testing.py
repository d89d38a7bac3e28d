"""Testing tools for kvactors and for programs that embed it.

Shipped with the library (as trio ships its fake clock) so users can test their own
code against kvactors with the same tools the project's tests use.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from kvactors.core.ops import AnyOp, MergeKey, MergeRecord
    from kvactors.core.versions import KeyState
    from kvactors.errors import KVActorsError
    from kvactors.replication.channel import ReplicaTarget, Settle
    from kvactors.system import ActorSystem

__all__ = [
    "FakeChannel",
    "FakeClock",
    "FakeTransport",
    "PeerCall",
    "Sent",
    "crash_store_server",
    "peer_endpoint",
    "replica_state",
    "stored_values",
    "wait_until",
]


def wait_until(
    condition: Callable[[], object],
    timeout: float = 5.0,
    interval: float = 0.005,
    message: str | Callable[[], str] | None = None,
) -> None:
    """Return as soon as `condition()` is true; raise AssertionError at the deadline.

    For conditions no event announces. The deadline makes a broken condition a test
    failure with a message, never a hang.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            if callable(message):  # what was seen last, said at the deadline
                message = message()
            raise AssertionError(message or f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


class FakeClock:
    """A monotonic clock that moves only when told to; pass `clock.now` as a clock."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    __call__ = now

    def advance(self, seconds: float) -> float:
        """Move time forward by `seconds` (never backward); returns the new time."""
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        with self._lock:
            self._now += seconds
            return self._now


class FakeTransport:
    """A node transport without sockets, for testing a node's request path.

    The calling thread plays the transport thread: frames a test feeds to a handler (for
    example `RequestService.handlers.client_frames`) are served on it, what the node
    sends is collected in `to_clients`, `to_callers` (replies on the peer plane) and
    `to_peers`, and `run(handlers)` drains the calls queued with `call_soon` and
    flushes, as the real loop does after each poll.
    """

    def __init__(
        self, endpoint: str = "tcp://127.0.0.1:1", peer_endpoint: str = "tcp://127.0.0.1:2"
    ) -> None:
        from kvactors.net.reply_backlog import ReplyBacklog  # noqa: PLC0415
        from kvactors.net.transport import TransportStats  # noqa: PLC0415

        self.endpoint = endpoint
        self.peer_endpoint = peer_endpoint
        self.stats = TransportStats()
        self.reply_backlog = ReplyBacklog(16 * 1024 * 1024)
        """Never holds a reply here (every send goes out), but the node reads its `slow`."""
        self.to_clients: list[list[bytes]] = []
        self.to_callers: list[list[bytes]] = []
        self.to_peers: list[tuple[str, list[bytes]]] = []
        self.reachable = True
        """Whether `send_to_peer` finds a connection (False: as if the peer were down)."""
        self.closed = False
        self._soon: list[Callable[[], None]] = []

    def in_loop_thread(self) -> bool:
        return True

    def call_soon(self, call: Callable[[], None]) -> bool:
        if self.closed:
            return False
        self._soon.append(call)
        return True

    def send_to_client(self, frames: list[bytes], account: bytes | None = None) -> None:
        self.to_clients.append(frames)

    def reply_to_peer(self, frames: list[bytes]) -> None:
        self.to_callers.append(frames)

    def send_to_peer(self, endpoint: str, frames: list[bytes]) -> bool:
        if self.reachable:
            self.to_peers.append((endpoint, frames))
        return self.reachable

    def disconnect_peer(self, endpoint: str) -> None:
        pass

    def run(self, handlers: Any, rounds: int = 100) -> None:
        """Run queued calls and flush (`handlers.flush`, the `TransportHandlers` given to
        the transport) until nothing more is queued."""
        for _ in range(rounds):
            handlers.flush()
            if not self._soon:
                return
            soon, self._soon = self._soon, []
            for call in soon:
                call()
        raise AssertionError(f"still busy after {rounds} rounds")


class Sent(NamedTuple):
    """One op a `FakeChannel` was given: the test answers it (`done`, `failed`)."""

    replica: str
    partition: int
    op: AnyOp
    target: ReplicaTarget
    tag: Any
    local: bool
    """Whether `replica` is the channel's own node (its StoreServer would apply `op`)."""

    def done(self, result: Any) -> None:
        self.target.replica_done(self.tag, result)

    def failed(self, error: KVActorsError) -> None:
        self.target.replica_failed(self.tag, error)


class PeerCall(NamedTuple):
    """One RPC a `FakeChannel` was asked to make: the test settles it."""

    endpoint: str
    op: str
    args: dict[str, Any]
    settle: Settle


@dataclass
class FakeChannel:
    """A `ReplicaChannel` (kvactors.replication.channel) that records everything and
    answers nothing by itself, for testing the replication state machines without a node.

    The test answers each op through the target and tag it carries (`Sent.done`,
    `Sent.failed`, or `answer_all`), in any order it likes, and settles each RPC through
    its `settle`. As on a node, an op for another member must be one that travels (it
    has a wire form, `core.ops.to_wire`), and a `Coordinate` is never for this node: a
    state machine that breaks either rule fails with TypeError here too.
    """

    me: str = "a"
    sent: list[Sent] = field(default_factory=list)
    """Every op sent, in order."""
    unanswered: list[Sent] = field(default_factory=list)
    """The ops sent and not yet taken by `take` or `answer_all`."""
    later: list[tuple[str, int, MergeKey | MergeRecord]] = field(default_factory=list)
    """(replica, partition, op) of every `send_later`."""
    calls: list[PeerCall] = field(default_factory=list)
    """The RPCs made (`call_peer`), in order."""
    hints: list[tuple[int, bytes, str]] = field(default_factory=list)
    """(partition, key, target) of every hint kept."""
    read_repairs: int = 0

    def send(
        self, replica: str, partition: int, op: AnyOp, target: ReplicaTarget, tag: Any
    ) -> None:
        from kvactors.core.ops import Coordinate, to_wire  # noqa: PLC0415

        local = replica == self.me
        if local and isinstance(op, Coordinate):
            raise TypeError(f"this node coordinates its own writes, not {op!r:.100}")
        if not local:
            to_wire(op)  # TypeError for an op that never travels
        sent = Sent(replica, partition, op, target, tag, local)
        self.sent.append(sent)
        self.unanswered.append(sent)

    def send_later(self, replica: str, partition: int, op: MergeKey | MergeRecord) -> None:
        self.later.append((replica, partition, op))

    def call_peer(self, endpoint: str, op: str, args: dict[str, Any], settle: Settle) -> None:
        self.calls.append(PeerCall(endpoint, op, args, settle))

    def hint(self, partition: int, key: bytes, target: str) -> None:
        self.hints.append((partition, key, target))

    def count_read_repair(self) -> None:
        self.read_repairs += 1

    def take(self, *kinds: type) -> list[Sent]:
        """The unanswered ops of these types (every one if none is named), in the order
        sent; they are the test's to answer now."""
        taken: list[Sent] = []
        kept: list[Sent] = []
        for sent in self.unanswered:
            (taken if not kinds or isinstance(sent.op, kinds) else kept).append(sent)
        self.unanswered = kept
        return taken

    def answer_all(self, result: Any = None) -> int:
        """Answer every unanswered op with `result` (those they cause wait for the next
        call); returns how many were answered."""
        taken, self.unanswered = self.unanswered, []
        for sent in taken:
            sent.done(result)
        return len(taken)

    def fail_all(self, error: KVActorsError) -> int:
        """Fail every unanswered op with `error`; returns how many failed."""
        taken, self.unanswered = self.unanswered, []
        for sent in taken:
            sent.failed(error)
        return len(taken)


def crash_store_server(
    system: ActorSystem, partition: int | None = None, rng: random.Random | None = None
) -> int | None:
    """Make one StoreServer of `system` crash (one drawn by `rng` unless `partition` is given).

    Returns the partition whose StoreServer was told to crash, or None if that
    partition had no live StoreServer at the moment (it may be restarting).
    """
    if partition is None:
        partition = (rng or random.Random()).randrange(system.config.partitions)
    ref = system.store_server(partition)
    if ref is None or not ref.is_alive():
        return None
    from kvactors.storage.store_server import CrashNow  # noqa: PLC0415 - keep import light

    try:
        ref.tell(CrashNow())
    except Exception:  # it died in between: the same as not live
        return None
    return partition


def replica_state(endpoint: str, key: str | bytes, timeout: float = 5.0) -> KeyState:
    """What the node at `endpoint` (its client or its peer endpoint) holds for `key` in
    its own store, whichever replicas the key has: the node's `KeyState` of it (empty
    when it holds none).

    For tests that check replication and repair on each node's own store. It speaks the
    node-to-node `store` RPC over a DEALER socket of its own, on the node's peer plane.
    """
    import zmq  # noqa: PLC0415 - kept out of the import of this module

    from kvactors.core.versions import state_from_wire  # noqa: PLC0415
    from kvactors.net.rpc import MARKER, STORE, decode_reply, encode_call  # noqa: PLC0415

    raw = key.encode("utf-8") if isinstance(key, str) else key
    peer = peer_endpoint(endpoint, timeout)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with context.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(peer)
        sock.send_multipart([MARKER, encode_call(1, STORE, timeout, {"ops": [["read", raw]]})])
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"{endpoint} did not answer a store read in {timeout}s")
        reply = decode_reply(sock.recv_multipart()[-1])
    if not reply.get("ok"):
        raise AssertionError(f"{endpoint} refused a store read: {reply.get('error')}")
    return state_from_wire(reply["result"]["results"][0])


def peer_endpoint(endpoint: str, timeout: float = 5.0) -> str:
    """The peer endpoint of the node at `endpoint`: asked for with a `status` request if
    `endpoint` is its client endpoint; `endpoint` itself if it is a peer endpoint (which
    answers a client request with an RPC error)."""
    import msgpack  # noqa: PLC0415
    import zmq  # noqa: PLC0415

    from kvactors.net.rpc import MARKER  # noqa: PLC0415

    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with context.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(msgpack.packb({"op": "status", "id": 1}))
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"{endpoint} did not answer a status request in {timeout}s")
        frames = sock.recv_multipart()
    if frames[0] == MARKER:
        return endpoint
    peer: str = msgpack.unpackb(frames[-1], raw=False)["status"]["peer_endpoint"]
    return peer


def stored_values(endpoint: str, key: str | bytes, timeout: float = 5.0) -> list[object]:
    """The live values (decoded, newest first) the node at `endpoint` holds for `key`."""
    from kvactors.codec import decode_value  # noqa: PLC0415

    state = replica_state(endpoint, key, timeout)
    return [decode_value(v.value) for v in state.live if v.value is not None]
