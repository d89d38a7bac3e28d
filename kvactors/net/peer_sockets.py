"""The DEALERs a node's transport opens to its peers, and the options of its sockets.

One DEALER per peer endpoint, opened on the first send. On a secure node (with a
`TransportSecurity`) each DEALER is a CURVE client pinned to the key `server_keys` gives
for its endpoint; when it gives several (a seed whose node is not known yet), one DEALER
per key is opened (the *candidates*), a message goes to every one whose handshake has
completed (IMMEDIATE: the others refuse it at once), and the first that answers is kept
(`settle`). Only the transport's thread uses a `PeerSockets`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import zmq

from kvactors.config import NodeConfig
from kvactors.errors import ConfigError
from kvactors.net.certs import Certificate, TrustSet
from kvactors.net.protocol import default_max_frame_bytes
from kvactors.net.zap import secure_client

__all__ = [
    "PeerSockets",
    "SocketOptions",
    "TransportSecurity",
    "apply_common_options",
    "client_send_hwm_for",
    "peer_frame_bytes",
]

logger = logging.getLogger(__name__)

_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


PEER_FRAME_SLACK = 64 * 1024
"""What a peer frame holds besides a key and its state: the call's envelope and op."""

DEFAULT_CLIENT_SEND_HWM = 16
"""The least SNDHWM of the client ROUTER (`client_send_hwm_for`)."""
MAX_CLIENT_SEND_HWM = 1024


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """ZeroMQ options set on purpose (docs/protocol.md explains each)."""

    max_message_bytes: int
    """MAXMSGSIZE on the client ROUTER: a client sending a larger frame is disconnected
    by libzmq."""
    peer_message_bytes: int | None = None
    """MAXMSGSIZE on the peer ROUTER (None: `max_message_bytes`): at least N x
    `max_state_bytes`, so that a merge of a key at its size bound always fits."""
    reply_frames: int = 64
    """MAXMSGSIZE on the DEALERs to peers is this many peer frames: a peer's answer to
    a batched call (reads, a pull) may carry many states."""
    high_water_mark: int = 10_000
    """SNDHWM and RCVHWM: messages queued per peer before ZeroMQ pushes back."""
    client_send_hwm: int = DEFAULT_CLIENT_SEND_HWM
    """SNDHWM of the client ROUTER, per connection (`client_send_hwm_for`): a reply to a
    connection with this many queued is held by the transport instead."""
    reply_backlog_bytes: int = 16 * 1024 * 1024
    """Bytes of replies the transport holds for one client connection whose queue is
    full (`max_reply_backlog_bytes`)."""
    linger_ms: int = 500
    """LINGER: how long replies already queued may still go out after close."""
    heartbeat_interval_ms: int = 2_000
    """HEARTBEAT_IVL: ZMTP pings on idle connections, so dead peers are noticed."""
    heartbeat_timeout_ms: int = 6_000
    """HEARTBEAT_TIMEOUT: no traffic for this long after a ping closes the connection."""
    heartbeat_ttl_ms: int = 6_000
    """HEARTBEAT_TTL: the remote side drops us after this long without traffic."""
    reconnect_interval_ms: int = 100
    """RECONNECT_IVL for DEALERs (RECONNECT_IVL_MAX is 20x this)."""

    @classmethod
    def from_config(cls, config: NodeConfig) -> SocketOptions:
        """The options of a node's sockets: the client frame limit of its key and value
        bounds, the peer frame limit of `peer_frame_bytes`, its reply backlog bound."""
        client_frame = default_max_frame_bytes(config.max_key_bytes, config.max_value_bytes)
        return cls(
            max_message_bytes=client_frame,
            peer_message_bytes=peer_frame_bytes(config, client_frame),
            client_send_hwm=client_send_hwm_for(config),
            reply_backlog_bytes=config.max_reply_backlog_bytes,
        )

    @property
    def peer_frame_bytes(self) -> int:
        """MAXMSGSIZE of the peer ROUTER."""
        return self.peer_message_bytes or self.max_message_bytes


def client_send_hwm_for(config: NodeConfig) -> int:
    """SNDHWM of a node's client ROUTER: as many replies of the largest value as
    `max_reply_backlog_bytes` holds, so that ZeroMQ's queue for one connection holds
    about as many bytes as the transport may hold beside it; at least 16, so that a
    pipelining client's bursts rarely wait in the backlog (they would lose nothing
    there: see kvactors.net.reply_backlog)."""
    fitting = config.max_reply_backlog_bytes // config.max_value_bytes
    return max(DEFAULT_CLIENT_SEND_HWM, min(MAX_CLIENT_SEND_HWM, fitting))


def peer_frame_bytes(config: NodeConfig, client_frame: int) -> int:
    """The largest frame a node's peer ROUTER accepts: a merge of a key whose N replicas
    each reached `max_state_bytes` concurrently (merges are never refused, so a merged
    state may hold all of them), with its key; never less than a client frame (a
    forwarded write is one)."""
    merge = config.replicas * config.max_state_bytes + config.max_key_bytes + PEER_FRAME_SLACK
    return max(client_frame, merge)


@dataclass(frozen=True, slots=True)
class TransportSecurity:
    """The keys of a secure transport (see kvactors.net.transport)."""

    certificate: Certificate
    """This node's own certificate, with its secret key."""
    trust: TrustSet
    """The certificates accepted, looked up live at each handshake and each message."""
    server_keys: Callable[[str], Sequence[bytes]]
    """The node keys (Z85) a server at an endpoint may hold; none: do not connect."""


def apply_common_options(sock: zmq.Socket[bytes], options: SocketOptions) -> None:
    sock.setsockopt(zmq.LINGER, options.linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, options.max_message_bytes)
    sock.setsockopt(zmq.SNDHWM, options.high_water_mark)
    sock.setsockopt(zmq.RCVHWM, options.high_water_mark)
    sock.setsockopt(zmq.HEARTBEAT_IVL, options.heartbeat_interval_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, options.heartbeat_timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, options.heartbeat_ttl_ms)


class PeerSockets:
    """The DEALERs to peers, by endpoint; see the module docstring."""

    def __init__(
        self,
        options: SocketOptions,
        poller: zmq.Poller,
        security: TransportSecurity | None,
        name: str,
    ) -> None:
        self._options = options
        self._poller = poller
        self._security = security
        self._name = name
        self.context: zmq.Context[zmq.Socket[bytes]] | None = None
        """Set by the transport once its thread has made it."""
        self.dealers: dict[str, zmq.Socket[bytes]] = {}
        """The DEALER of each endpoint whose server key is settled (every one, insecure)."""
        self.endpoints: dict[zmq.Socket[bytes], str] = {}
        """The endpoint of every DEALER open, candidates too."""
        self._keys: dict[zmq.Socket[bytes], bytes] = {}
        self._candidates: dict[str, list[zmq.Socket[bytes]]] = {}
        self._keyless: set[str] = set()  # endpoints with no key to pin, logged once

    def connect(self, endpoint: str) -> zmq.Socket[bytes] | None:
        """A new DEALER to `endpoint`; None on a secure node when its server's key is
        not settled (then `send_to_candidates`)."""
        security = self._security
        if security is None:
            return self._open(endpoint)
        if endpoint in self._candidates:
            return None
        keys = list(dict.fromkeys(security.server_keys(endpoint)))
        if len(keys) == 1:
            return self._open(endpoint, keys[0])
        if not keys and endpoint not in self._keyless:
            self._keyless.add(endpoint)
            logger.warning(
                "%s: no trusted node key for %s; nothing is sent there", self._name, endpoint
            )
        self._candidates[endpoint] = [self._open(endpoint, key, candidate=True) for key in keys]
        return None

    def send_to_candidates(self, endpoint: str, frames: list[bytes]) -> bool:
        """Send on every candidate DEALER of `endpoint` whose handshake has completed;
        False if none has (or there is none)."""
        sent = False
        last = len(frames) - 1
        for dealer in self._candidates.get(endpoint, ()):
            try:
                for index, frame in enumerate(frames):
                    dealer.send(frame, _NOBLOCK if index == last else _NOBLOCK_MORE)
            except zmq.Again:
                continue
            sent = True
        return sent

    def settle(self, dealer: zmq.Socket[bytes]) -> str:
        """The endpoint of `dealer`, which has a message to read. A candidate that
        answers holds its server's key: it is kept and the others are closed."""
        endpoint = self.endpoints[dealer]
        if self._candidates and endpoint in self._candidates:
            for candidate in self._candidates.pop(endpoint):
                if candidate is not dealer:
                    self._close(candidate)
            self.dealers[endpoint] = dealer
        return endpoint

    def disconnect(self, endpoint: str) -> None:
        dealer = self.dealers.pop(endpoint, None)
        if dealer is not None:
            self._close(dealer)
        for candidate in self._candidates.pop(endpoint, ()):
            self._close(candidate)

    def refresh_keys(self) -> None:
        """After the trust set changed: close every DEALER whose key is no longer the
        one its endpoint must hold, and every candidate (the next send opens them again
        with the keys trusted now)."""
        security = self._security
        if security is None:
            return
        for endpoint, dealer in list(self.dealers.items()):
            if self._keys.get(dealer) not in security.server_keys(endpoint):
                self.disconnect(endpoint)
        for endpoint in list(self._candidates):
            self.disconnect(endpoint)
        self._keyless.clear()

    def close_all(self) -> None:
        for dealer in list(self.endpoints):
            dealer.close(linger=0)
        self.dealers.clear()
        self.endpoints.clear()
        self._keys.clear()
        self._candidates.clear()

    def _close(self, dealer: zmq.Socket[bytes]) -> None:
        del self.endpoints[dealer]
        self._keys.pop(dealer, None)
        self._poller.unregister(dealer)
        dealer.close(linger=0)

    def _open(
        self, endpoint: str, server_key: bytes | None = None, *, candidate: bool = False
    ) -> zmq.Socket[bytes]:
        assert self.context is not None
        options = self._options
        dealer = self.context.socket(zmq.DEALER)
        apply_common_options(dealer, options)
        dealer.setsockopt(zmq.MAXMSGSIZE, options.peer_frame_bytes * options.reply_frames)
        # Queue nothing for a peer with no live connection: a send fails at once and the
        # RPC layer reports it, instead of messages piling up for a dead node.
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        # No ROUTING_ID: the peer's ROUTER names the connection itself, so no node can
        # present another's id and take over its connection.
        dealer.setsockopt(zmq.RECONNECT_IVL, options.reconnect_interval_ms)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, options.reconnect_interval_ms * 20)
        if server_key is not None:
            assert self._security is not None
            try:
                secure_client(dealer, self._security.certificate, server_key)
            except ConfigError:
                dealer.close(linger=0)
                raise
            self._keys[dealer] = server_key
        dealer.connect(endpoint)
        if not candidate:
            self.dealers[endpoint] = dealer
        self.endpoints[dealer] = endpoint
        self._poller.register(dealer, zmq.POLLIN)
        return dealer
