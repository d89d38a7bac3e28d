"""The transport: the one thread that owns every ZeroMQ socket of a node.

It binds the node's two ROUTERs, one for clients and one for peers (the peer plane:
node-to-node traffic only), keeps one DEALER per peer it talks to, and runs its
handlers for everything that arrives. No other thread touches a socket: other threads
hand the transport work with `call_soon`, which queues a callable and wakes the
transport through a pipe its poller watches.

Each turn of the loop drains every ready frame and every queued call before it polls
again, then runs the flush handler, so work that arrived together leaves together (one
batch per StoreServer, one send per reply).

Replies to clients are bounded in bytes per connection: the client ROUTER has a modest
SNDHWM and ROUTER_MANDATORY, so a reply to a connection whose queue is full raises
EAGAIN at once; it is then held in that connection's `ReplyBacklog`
(kvactors.net.reply_backlog, which tells the whole design) and offered again on later
turns, while the loop also watches the ROUTER's command descriptor, which ZeroMQ's I/O
thread signals as the queue drains (and, since zmq_poll may take that signal in itself,
wakes at least every `_HELD_RETRY_MS` then). A connection past its budget has its
replies dropped and its requests refused until it reads; one that has gone has its held
replies freed. With nothing held, a reply costs one test of an empty dict more than a
bare send.

The peer ROUTER takes frames up to `SocketOptions.peer_frame_bytes` (N x
`max_state_bytes` and a key: a merge of a key at its size bound always fits).

Secure mode (`TransportSecurity`): the thread answers CURVE handshakes with a
`ZapResponder` on its own context, both ROUTERs are CURVE servers (the client plane on
`CLIENT_DOMAIN`, the peer plane on `PEER_DOMAIN`, which admits node keys only), and each
message received there goes to the handler with the certificate its sender's key has in
the live trust set now (`authorized_client_frames`, `authorized_peer_request`). Each
DEALER is a CURVE client pinned to the key `server_keys` gives for its endpoint; when it
gives several (a seed whose node is not known yet), one DEALER per key is opened, a
message goes to every one whose handshake has completed, and the first to answer is
kept. Without keys none of this runs: the insecure path is the same as before.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import zmq

from kvactors.errors import ConfigError, InternalError
from kvactors.net.certs import Certificate, TrustSet
from kvactors.net.peer_sockets import (
    PeerSockets,
    SocketOptions,
    TransportSecurity,
    apply_common_options,
)
from kvactors.net.reply_backlog import FULL, GONE, SENT, ReplyBacklog
from kvactors.net.zap import (
    CLIENT_DOMAIN,
    PEER_DOMAIN,
    ZapResponder,
    authenticated_peer,
    secure_server,
)

__all__ = [
    "SocketOptions",
    "Transport",
    "TransportHandlers",
    "TransportSecurity",
    "TransportStats",
]

logger = logging.getLogger(__name__)

# Frames taken from one socket per turn, so one busy socket cannot starve the others.
_DRAIN_BUDGET = 4096
# Flags as plain ints: pyzmq's own multipart helpers combine enum flags on every part,
# which costs more than the send itself for small messages.
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
# While replies are held, the longest the loop sleeps before offering them again even
# if ZeroMQ's signal that their connection's queue drained was lost (see _retry_held).
_HELD_RETRY_MS = 5
# The send of pyzmq's compiled socket, under the Python layer its Socket class adds (for
# draft sockets' routing ids and groups, unused here): a Python call less per frame.
_raw_send = zmq.backend.Socket.send


def _send_parts(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """send_multipart, without blocking; small frames are copied (cheaper than zero-copy)."""
    if len(frames) == 2:  # the usual reply: a DEALER's routing id, then the reply
        _raw_send(sock, frames[0], _NOBLOCK_MORE)
        _raw_send(sock, frames[1], _NOBLOCK)
        return
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        _raw_send(sock, frame, _NOBLOCK if index == last else _NOBLOCK_MORE)


def _try_send(sock: zmq.Socket[bytes], frames: list[bytes]) -> int:
    """One held reply offered again on a ROUTER_MANDATORY ROUTER: SENT, FULL or GONE.
    Either error comes on the routing id, before any part is queued."""
    try:
        _send_parts(sock, frames)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EAGAIN:
            return FULL
        if exc.errno == zmq.EHOSTUNREACH:
            return GONE
        raise
    return SENT


def _send_or_hold(
    router: zmq.Socket[bytes],
    frames: list[bytes],
    backlog: ReplyBacklog,
    stats: TransportStats,
    account: bytes | None,
) -> bool:
    """A reply whose connection's queue looked full. Reading EVENTS has the socket take
    in its I/O thread's commands, which often tell of room already (the first replies of
    a burst were taken while the others were sent): then it goes, else it is held.
    False if it was dropped (see `ReplyBacklog.hold`)."""
    router.get(_EVENTS)
    outcome = _try_send(router, frames)
    if outcome == FULL:
        return backlog.hold(frames, account)
    if outcome == SENT:
        stats.frames_out += 1
    else:
        stats.unroutable += 1
    return True


def _offer_held(router: zmq.Socket[bytes], backlog: ReplyBacklog, stats: TransportStats) -> None:
    """Offer a backlog's held replies again. Reading EVENTS first has the socket take in
    its I/O thread's commands: the room freed in each queue, the connections gone."""
    router.get(_EVENTS)
    freed = backlog.freed
    # A partial, not a lambda: no Python frame of its own for each held reply.
    stats.frames_out += backlog.retry(functools.partial(_try_send, router))
    stats.unroutable += backlog.freed - freed


def _recv_parts(sock: zmq.Socket[bytes]) -> list[bytes]:
    """recv_multipart without blocking; raises zmq.Again when nothing is ready.

    Frames come as zmq.Frame objects whose `more` flag is read off the frame: asking the
    socket for RCVMORE costs a Python-level option lookup per part, more than the copy.
    """
    recv = sock.recv
    frame = recv(_NOBLOCK, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = recv(_NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames


def _drain_router(
    router: zmq.Socket[bytes], serve: Callable[[list[bytes]], None], stats: TransportStats
) -> None:
    """Hand each ready message of an insecure ROUTER to `serve`, up to the budget.

    Each drain receives until the socket has nothing ready (zmq.Again, after the socket
    has taken in its I/O thread's commands): one exception per drain costs less than
    asking for EVENTS before each message once a drain takes more than two or three
    (pyzmq makes an enum member of the option on every read), and the drains that
    count, under load, take many."""
    recv = router.recv
    for _ in range(_DRAIN_BUDGET):
        try:
            frame = recv(_NOBLOCK, copy=False)
        except zmq.Again:
            return
        frames = [frame.bytes]
        while frame.more:
            frame = recv(_NOBLOCK, copy=False)
            frames.append(frame.bytes)
        stats.frames_in += 1
        serve(frames)


def _router_drains(
    router: zmq.Socket[bytes],
    peer_router: zmq.Socket[bytes] | None,
    handlers: TransportHandlers,
    trust: TrustSet | None,
    stats: TransportStats,
) -> tuple[Callable[[], None], Callable[[], None]]:
    """How the loop drains the client and the peer ROUTER, decided once: a secure node
    (`trust` given) reads each sender's certificate, an insecure one only the frames.
    The peer ROUTER's drain is called only when it exists (the poller has it then)."""
    if trust is None:

        def drain_client() -> None:
            _drain_router(router, handlers.client_frames, stats)

        def drain_peer() -> None:
            assert peer_router is not None
            _drain_router(peer_router, handlers.peer_request, stats)

        return drain_client, drain_peer
    serve_client = handlers.authorized_client_frames
    serve_peer = handlers.authorized_peer_request
    assert serve_client is not None and serve_peer is not None

    def drain_secure_client() -> None:
        _drain_secure_router(router, serve_client, trust, stats)

    def drain_secure_peer() -> None:
        assert peer_router is not None
        _drain_secure_router(peer_router, serve_peer, trust, stats)

    return drain_secure_client, drain_secure_peer


def _drain_secure_router(
    router: zmq.Socket[bytes],
    serve: Callable[[list[bytes], Certificate | None], None],
    trust: TrustSet,
    stats: TransportStats,
) -> None:
    """The transport's `_drain_router` for a CURVE ROUTER: the sender's key is read off
    the first frame (libzmq attaches the handshake's properties to every frame) and
    looked up in the live trust set, per message. Received until zmq.Again, as there."""
    recv = router.recv
    for _ in range(_DRAIN_BUDGET):
        try:
            frame = recv(_NOBLOCK, copy=False)
        except zmq.Again:
            return
        certificate = authenticated_peer(frame, trust)
        frames = [frame.bytes]
        while frame.more:
            frame = recv(_NOBLOCK, copy=False)
            frames.append(frame.bytes)
        stats.frames_in += 1
        if certificate is None:
            stats.unauthorized += 1
        serve(frames, certificate)


@dataclass(slots=True)
class TransportStats:
    frames_in: int = 0
    frames_out: int = 0
    unroutable: int = 0
    """Replies to a client that had gone (ROUTER_MANDATORY reports them), held ones too."""
    peer_send_dropped: int = 0
    """Messages to a peer dropped because it was unreachable or its queue full."""
    unauthorized: int = 0
    """Messages received from a key the trust set no longer holds (secure mode)."""


@dataclass(frozen=True, slots=True)
class TransportHandlers:
    """What the transport calls, always in its own thread. Plain callables, so that a
    frame goes straight to the component that serves it."""

    client_frames: Callable[[list[bytes]], None]
    """A message on the client ROUTER: routing envelope, then the payload frame(s)."""
    peer_request: Callable[[list[bytes]], None]
    """A message on the peer ROUTER: a peer's routing id, then its frames."""
    peer_reply: Callable[[str, list[bytes]], None]
    """A message that arrived on the DEALER connected to the endpoint given."""
    flush: Callable[[], None]
    """Everything ready has been drained; send what was gathered."""
    tick: Callable[[float], None]
    """Called about every `tick_interval` seconds (timeouts, retries)."""
    close: Callable[[], None]
    """The transport is stopping; answer what is pending. Sockets still work."""
    authorized_client_frames: Callable[[list[bytes], Certificate | None], None] | None = None
    """Secure mode, in place of `client_frames`: a client's message and its sender's
    certificate in the live trust set (None: its key is no longer trusted)."""
    authorized_peer_request: Callable[[list[bytes], Certificate | None], None] | None = None
    """Secure mode, in place of `peer_request`: likewise on the peer ROUTER."""


class Transport:
    """Owns the node's sockets in one thread; see the module docstring."""

    def __init__(
        self,
        bind: str,
        options: SocketOptions,
        *,
        peer_bind: str | None = None,
        name: str = "transport",
        tick_interval: float = 0.05,
        security: TransportSecurity | None = None,
    ) -> None:
        self._bind = bind
        self._security = security
        self._zap: ZapResponder | None = None
        self._peer_bind = peer_bind
        self._options = options
        self._name = name
        self._tick_interval = tick_interval
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._wake_pending = False
        self._wake_lock = threading.Lock()  # guards the pipe against use after close
        self._pipe_open = True
        self._running = False
        self._stopping = False
        self._closed = False  # no more calls are taken
        self._close_lock = threading.Lock()
        self._thread_ident: int | None = None
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._peer_router: zmq.Socket[bytes] | None = None
        self._poller = zmq.Poller()
        self._peers = PeerSockets(options, self._poller, security, name)
        self._dealers = self._peers.dealers
        self._dealer_endpoints = self._peers.endpoints
        self.reply_backlog = ReplyBacklog(options.reply_backlog_bytes)
        """Replies held for client connections whose queue is full."""
        self._held = self.reply_backlog.held  # tested before each reply: empty, nearly free
        self._router_fd: int | None = None  # the client ROUTER's, polled while replies are held
        self._handlers: TransportHandlers | None = None
        self._on_failure: Callable[[BaseException], None] | None = None
        self.endpoint = bind
        """The client endpoint actually bound (a port of 0 or * is resolved)."""
        self.peer_endpoint = peer_bind
        """The peer endpoint actually bound, if there is a peer plane."""
        self.stats = TransportStats()

    # -- lifecycle (any thread) --------------------------------------------------------

    def start(
        self,
        handlers: TransportHandlers,
        on_failure: Callable[[BaseException], None] | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Bind and start the thread; raises if the endpoint cannot be bound."""
        if self._security is not None and (
            handlers.authorized_client_frames is None or handlers.authorized_peer_request is None
        ):
            raise ConfigError("a secure transport needs its authorized_* handlers")
        self._handlers = handlers
        self._on_failure = on_failure
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise InternalError(f"{self._name}: transport did not start within {timeout}s")
        if self._start_error is not None:
            raise self._start_error

    def stop(self, timeout: float = 10.0) -> None:
        """Let the handler answer what is pending, close every socket, end the thread."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("%s: transport thread did not stop within %.1fs", self._name, timeout)
        with self._wake_lock:
            self._pipe_open = False
            for fd in (self._wake_read, self._wake_write):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._running

    def in_loop_thread(self) -> bool:
        """True when called on the transport thread itself."""
        return threading.get_ident() == self._thread_ident

    def call_soon(self, call: Callable[[], None]) -> bool:
        """Run `call` in the transport thread soon. Safe from any thread.

        False if the transport has closed (its last calls have run): `call` will not run.
        """
        if threading.get_ident() == self._thread_ident:
            # From the loop itself (a reply from an actor it runs): the drain picks it up.
            if self._closed:
                return False
            self._calls.append(call)
            return True
        with self._close_lock:
            if self._closed:
                return False
            self._calls.append(call)
        # The flag spares a syscall per call while the transport is already awake. It is
        # cleared before the queue is drained, so a call added meanwhile either is
        # drained or wakes the transport again.
        if not self._wake_pending:
            self._wake_pending = True
            self._wake()
        return True

    # -- sending (transport thread only) -----------------------------------------------

    def send_to_client(self, frames: list[bytes], account: bytes | None = None) -> bool:
        """Send a reply on the client ROUTER; `frames` start with the request's envelope.
        A connection whose queue is full has the reply held (see the module docstring);
        False if it was dropped instead, its backlog being full. A secure node names the
        client's key as `account`: what is held for it counts against that key's budget,
        over all its connections."""
        held = self._held
        if held and frames[0] in held:  # behind the replies already held for it
            return self.reply_backlog.hold(frames, account)
        router = self._router
        assert router is not None
        try:
            if len(frames) == 2:  # _send_parts' usual case, inlined: a call less per reply
                _raw_send(router, frames[0], _NOBLOCK_MORE)
                _raw_send(router, frames[1], _NOBLOCK)
            else:
                _send_parts(router, frames)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EAGAIN:
                return _send_or_hold(router, frames, self.reply_backlog, self.stats, account)
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.stats.unroutable += 1  # the client has gone
            return True
        self.stats.frames_out += 1
        return True

    def reply_to_peer(self, frames: list[bytes]) -> None:
        """Send a reply on the peer ROUTER; `frames` start with the caller's routing id."""
        assert self._peer_router is not None
        self._reply(self._peer_router, frames)

    def _reply(self, router: zmq.Socket[bytes], frames: list[bytes]) -> None:
        try:
            _send_parts(router, frames)
            self.stats.frames_out += 1
        except zmq.ZMQError as exc:
            # ROUTER_MANDATORY: EHOSTUNREACH for a peer that has gone; EAGAIN when its
            # queue is full. Either way the reply cannot be delivered (the caller's own
            # timeout covers it); count it.
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            self.stats.unroutable += 1

    def _retry_held(self, router: zmq.Socket[bytes]) -> None:
        """Offer the held replies again (`_offer_held`). While replies are held, the loop
        also wakes when ZeroMQ signals the ROUTER's descriptor (a queue drained, a
        connection gone), and after `_HELD_RETRY_MS` at the latest: zmq_poll reads the
        ROUTER's EVENTS itself, which takes in a command that arrives between its poll
        of the descriptors and that read, and with it the signal (a lost wake-up)."""
        _offer_held(router, self.reply_backlog, self.stats)
        if bool(self._held) != (self._router_fd is None):
            return
        if self._router_fd is None:
            self._router_fd = cast(int, router.get(zmq.FD))
            self._poller.register(self._router_fd, zmq.POLLIN)
        else:
            self._poller.unregister(self._router_fd)
            self._router_fd = None

    def send_to_peer(self, endpoint: str, frames: list[bytes]) -> bool:
        """Send to a peer's ROUTER over this node's DEALER to it; False if dropped."""
        dealer = self._dealers.get(endpoint) or self._peers.connect(endpoint)
        if dealer is None:  # secure, and the endpoint's key not settled yet
            if self._peers.send_to_candidates(endpoint, frames):
                self.stats.frames_out += 1
                return True
            self.stats.peer_send_dropped += 1
            return False
        try:
            _send_parts(dealer, frames)
        except zmq.Again:
            # IMMEDIATE: no live connection (or its queue is full); the caller's
            # timeout turns this into a typed error.
            self.stats.peer_send_dropped += 1
            return False
        self.stats.frames_out += 1
        return True

    def disconnect_peer(self, endpoint: str) -> None:
        self._peers.disconnect(endpoint)

    def refresh_peer_keys(self) -> None:
        """Secure mode, after the trust set changed: close the DEALERs pinned to keys no
        longer right for their endpoint (see PeerSockets.refresh_keys)."""
        self._peers.refresh_keys()

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        self._thread_ident = threading.get_ident()
        try:
            self._open()
        except BaseException as exc:
            self._start_error = exc
            with self._close_lock:
                self._closed = True  # a transport that never ran runs no calls
            self._close_sockets()
            self._thread_ident = None
            self._started.set()
            return
        self._running = True
        self._started.set()
        failure: BaseException | None = None
        try:
            self._loop()
        except BaseException as exc:
            logger.exception("%s: transport thread failed", self._name)
            failure = exc
        finally:
            self._close()
        if failure is not None and self._on_failure is not None:
            self._on_failure(failure)
        # A later thread may be given this thread's id: it must not pass for the loop's.
        self._thread_ident = None

    def _close(self) -> None:
        # Refuse new calls, then run the ones taken: an actor slice queued here must run
        # here, since its dispatcher was told it would.
        with self._close_lock:
            self._closed = True
        self._run_calls()
        self._running = False
        self._close_sockets()

    def _open(self) -> None:
        self._context = self._peers.context = zmq.Context()
        if self._security is not None:
            # Before any secure socket binds: a CURVE handshake with nobody to answer its
            # ZAP request fails (secure_server sets ZAP_ENFORCE_DOMAIN).
            self._zap = ZapResponder(self._context, self._security.trust)
            self._poller.register(self._zap.socket, zmq.POLLIN)
        self._router = self._bind_router(self._bind, CLIENT_DOMAIN)
        self.endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._poller.register(self._router, zmq.POLLIN)
        if self._peer_bind is not None:
            self._peer_router = self._bind_router(self._peer_bind, PEER_DOMAIN)
            self.peer_endpoint = self._peer_router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._poller.register(self._peer_router, zmq.POLLIN)
        self._poller.register(self._wake_read, zmq.POLLIN)

    def _bind_router(self, endpoint: str, domain: str) -> zmq.Socket[bytes]:
        assert self._context is not None
        router = self._context.socket(zmq.ROUTER)
        options = self._options
        apply_common_options(router, options)
        if domain == PEER_DOMAIN:
            router.setsockopt(zmq.MAXMSGSIZE, options.peer_frame_bytes)
        else:
            router.setsockopt(zmq.SNDHWM, options.client_send_hwm)
        if self._security is not None:
            try:
                secure_server(router, self._security.certificate, domain)
            except ConfigError:
                router.close(linger=0)
                raise
        # A full or gone peer raises at once instead of its replies vanishing. No
        # ROUTER_HANDOVER: a second connection presenting a routing id in use is refused
        # by libzmq, never handed the first one's replies (nor able to abort the node).
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            router.bind(endpoint)
        except zmq.ZMQError as exc:
            router.close(linger=0)
            raise ConfigError(f"cannot bind {endpoint}: {exc}") from exc
        return router

    def _loop(self) -> None:
        handlers = self._handlers
        assert handlers is not None and self._router is not None
        router, peer_router = self._router, self._peer_router
        flush = handlers.flush
        zap = None if self._zap is None else self._zap.socket
        trust = None if self._security is None else self._security.trust
        drain_client, drain_peer = _router_drains(router, peer_router, handlers, trust, self.stats)
        next_tick = time.monotonic() + self._tick_interval
        while not self._stopping:
            timeout_ms = (
                0 if self._calls else max(1, math.ceil((next_tick - time.monotonic()) * 1000))
            )
            if self._router_fd is not None:  # replies held: see _retry_held
                timeout_ms = min(timeout_ms, _HELD_RETRY_MS)
            for sock, _ in self._poller.poll(timeout_ms):
                if sock is router:
                    drain_client()
                elif sock is peer_router:
                    drain_peer()
                elif sock == self._wake_read:
                    self._drain_wake_pipe()
                elif isinstance(sock, zmq.Socket) and sock in self._dealer_endpoints:
                    self._drain_dealer(handlers, sock)
                elif sock is zap and self._zap is not None:
                    self._zap.handle_ready()
            self._run_calls()
            flush()
            while self._calls:  # what the flush handed to actors running on this thread
                self._run_calls()
                flush()  # and what their answers queued in turn
            if self._held or self._router_fd is not None:
                self._retry_held(router)
            now = time.monotonic()
            if now >= next_tick:
                handlers.tick(now)
                next_tick = now + self._tick_interval
        handlers.close()
        self._run_calls()
        flush()

    def _drain_dealer(self, handlers: TransportHandlers, dealer: zmq.Socket[bytes]) -> None:
        endpoint = self._peers.settle(dealer)
        for _ in range(_DRAIN_BUDGET):
            try:  # until nothing is ready, as in _drain_router
                frames = _recv_parts(dealer)
            except zmq.Again:
                return
            self.stats.frames_in += 1
            handlers.peer_reply(endpoint, frames)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_calls(self) -> None:
        self._wake_pending = False
        calls = self._calls
        while calls:
            try:
                calls.popleft()()
            except Exception:
                # One faulty callback must not take the node's sockets (and the calls
                # queued behind it) down with it.
                logger.exception("%s: a queued call failed", self._name)

    def _wake(self) -> None:
        # A full pipe means a wake-up is pending anyway. After stop() the descriptors
        # are closed (and their numbers may be reused), hence the lock and the flag.
        with self._wake_lock, contextlib.suppress(BlockingIOError):
            if self._pipe_open:
                os.write(self._wake_write, b"\0")

    def _close_sockets(self) -> None:
        self.reply_backlog.clear()
        if self._router_fd is not None:
            self._poller.unregister(self._router_fd)
            self._router_fd = None
        self._peers.close_all()
        for router in (self._router, self._peer_router):
            if router is not None:
                router.close()
        self._router = self._peer_router = None
        if self._zap is not None:
            self._zap.close()
            self._zap = None
        if self._context is not None:
            self._context.term()
            self._context = None
