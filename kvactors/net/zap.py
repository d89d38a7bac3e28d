"""Our own ZAP handler (ZeroMQ RFC 27), and the socket options of CURVE sockets.

How CURVE authentication fits together on a node:

1. The transport thread makes a `ZapResponder` on its zmq.Context before it binds any
   secure socket; the responder binds `inproc://zeromq.zap.01`, where libzmq sends the
   ZAP request of every CURVE handshake made by any socket of that context. The thread
   registers `responder.socket` with its poller (POLLIN) and calls `handle_ready()`
   whenever it is readable: every pending request is answered at once, without
   blocking, and nothing it receives can make it raise.
2. Each server socket gets `secure_server(sock, certificate, CLIENT_DOMAIN or
   PEER_DOMAIN)` before it binds; each client socket `secure_client(sock, certificate,
   server_public_key)` before it connects.
3. The responder answers 200 when the client's key is in the trust set and its role is
   admitted on the socket's domain (`DOMAIN_ROLES`: the peer domain admits node keys
   only, the client domain every role), and 400 otherwise; a request it cannot read
   gets 500. libzmq completes the handshake on 200 only.

Failing closed. A CURVE server with no ZAP handler bound accepts *any* client key
("Stonehouse"): libzmq refuses instead only with `ZAP_ENFORCE_DOMAIN=1` and a non-empty
`ZAP_DOMAIN`, which `secure_server` always sets (it refuses an empty domain). So a node
whose responder is missing or closed refuses every connection; tests/integration/
test_zap.py shows it.

Who sent a message. On 200 the responder sets the ZAP User-Id to the certificate's name
and these metadata properties:

    Role        the role at the handshake ("read", "write", "admin", "node")
    Public-Key  the client's public key, 40 bytes of Z85

libzmq attaches them, and "User-Id", to every frame received from that connection (the
ROUTER's routing-id frame too). With pyzmq 27 / libzmq 4.3.5, receive with `copy=False`
and read them from any frame: `frame.get("User-Id")` and `frame.get("Role")` return str;
a property the connection does not have raises zmq.ZMQError (EINVAL), as on a socket
with no security. The ZAP properties win over any property of the same name the peer
sends in its handshake (libzmq keeps the first it inserts, and inserts ZAP's first), and
a peer's own properties must start with "X-".

The name and role on a frame were true at the handshake. To decide per message with
the live trust set (so that a key removed by `TrustSet.reload` loses its open
connections' rights at once), use `authenticated_peer(frame, trust)`: it looks the
connection's key up in the trust set now and returns the certificate or None. Then
`role_allows(certificate.role, op)` on the client plane, and `certificate.role is
Role.NODE` on the peer plane.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Collection, Mapping
from typing import Final

import zmq

from kvactors.errors import ConfigError
from kvactors.net.certs import Certificate, Role, TrustSet, z85_key

__all__ = [
    "CLIENT_DOMAIN",
    "DOMAIN_ROLES",
    "KEY_PROPERTY",
    "PEER_DOMAIN",
    "ROLE_PROPERTY",
    "USER_ID_PROPERTY",
    "ZAP_ENDPOINT",
    "KeyLookup",
    "ZapResponder",
    "authenticated_peer",
    "encode_metadata",
    "secure_client",
    "secure_server",
]

logger = logging.getLogger(__name__)

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
CLIENT_DOMAIN: Final = "kvactors-client"
PEER_DOMAIN: Final = "kvactors-peer"
DOMAIN_ROLES: Final[Mapping[str, frozenset[Role]]] = {
    CLIENT_DOMAIN: frozenset(Role),
    PEER_DOMAIN: frozenset({Role.NODE}),
}
USER_ID_PROPERTY: Final = "User-Id"
ROLE_PROPERTY: Final = "Role"
KEY_PROPERTY: Final = "Public-Key"

KeyLookup = Callable[[bytes], Certificate | None]
"""A trust lookup: a public key (Z85) -> its certificate, or None when not trusted."""

_VERSION: Final = b"1.0"
_CURVE: Final = b"CURVE"
# A request after the envelope: version, request id, domain, address, identity,
# mechanism, then the mechanism's credentials (one 32-byte key for CURVE).
_REQUEST_FIELDS: Final = 6
_OK: Final = b"200"
_REFUSED: Final = b"400"
_BROKEN: Final = b"500"
# Refusals are logged, but a scanner retrying every 100 ms must not flood the log.
_LOG_WINDOW_SECONDS: Final = 60.0
_LOG_LINES_PER_WINDOW: Final = 20


def encode_metadata(properties: Mapping[str, str]) -> bytes:
    """ZMTP's property list, as a ZAP reply's metadata frame carries it: for each, a
    one-byte name length, the name, a four-byte big-endian value length, the value."""
    parts = []
    for name, value in properties.items():
        name_bytes, value_bytes = name.encode(), value.encode()
        if not 0 < len(name_bytes) < 256:
            raise ValueError(f"a property name is 1 to 255 bytes: {name!r}")
        parts += [bytes([len(name_bytes)]), name_bytes, struct.pack(">I", len(value_bytes))]
        parts.append(value_bytes)
    return b"".join(parts)


class ZapResponder:
    """Answers libzmq's ZAP requests for every CURVE socket of one zmq.Context.

    `trust` is a TrustSet (looked up live, so a `reload` applies to the next handshake)
    or any `KeyLookup`. `domains` maps each ZAP domain to the roles it admits; a request
    for another domain is refused. Not thread-safe: one thread (the transport's) polls
    `socket` and calls `handle_ready`. The counters `accepted`, `refused` and `malformed`
    count the answers given (a malformed request that cannot be answered at all counts as
    malformed too).

    Raises zmq.ZMQError (EADDRINUSE) if the context has a ZAP handler already."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        trust: TrustSet | KeyLookup,
        *,
        domains: Mapping[str, Collection[Role]] = DOMAIN_ROLES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup: KeyLookup = trust.lookup if isinstance(trust, TrustSet) else trust
        self._domains = {domain.encode(): frozenset(roles) for domain, roles in domains.items()}
        self._clock = clock
        self._log_window_start = clock()
        self._log_lines = 0
        self._suppressed = 0
        self.accepted = 0
        self.refused = 0
        self.malformed = 0
        sock: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError:
            sock.close()
            raise
        self.socket = sock

    def handle_ready(self) -> int:
        """Answer every request waiting, without blocking; how many were received."""
        received = 0
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return received
            except zmq.ZMQError as exc:  # closed under us, or a context being terminated
                logger.warning("ZAP socket cannot receive: %s", exc)
                return received
            received += 1
            self._answer(frames)

    def close(self) -> None:
        """Unbind and close; from then on every secure socket of the context refuses all."""
        if not self.socket.closed:
            self.socket.close()

    def _answer(self, frames: list[bytes]) -> None:
        # ROUTER envelope: the session's routing id, the empty delimiter, then the request.
        try:
            delimiter = frames.index(b"")
        except ValueError:
            self.malformed += 1
            return  # no envelope: nobody to answer
        envelope, request = frames[: delimiter + 1], frames[delimiter + 1 :]
        try:
            status, text, user_id, metadata = self._decide(request)
        except Exception:  # a fault here must never reach the transport thread
            logger.exception("ZAP request could not be judged")
            status, text, user_id, metadata = _BROKEN, b"internal error", b"", b""
        if status == _OK:
            self.accepted += 1
        elif status == _REFUSED:
            self.refused += 1
        else:
            self.malformed += 1
        request_id = request[1] if len(request) > 1 else b""
        reply = [*envelope, _VERSION, request_id, status, text, user_id, metadata]
        try:
            self.socket.send_multipart(reply, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the handshake went away; its session is gone
            logger.debug("ZAP reply not sent: %s", exc)

    def _decide(self, request: list[bytes]) -> tuple[bytes, bytes, bytes, bytes]:
        """(status, status text, user id, metadata) for one request."""
        if len(request) < _REQUEST_FIELDS or request[0] != _VERSION:
            return _BROKEN, b"not a ZAP 1.0 request", b"", b""
        domain, address, mechanism, credentials = (
            request[2],
            request[3],
            request[5],
            request[_REQUEST_FIELDS:],
        )
        if mechanism != _CURVE:
            self._log_refusal(domain, address, f"mechanism {mechanism[:20]!r}, not CURVE")
            return _REFUSED, b"CURVE only", b"", b""
        if len(credentials) != 1 or len(credentials[0]) != 32:
            return _BROKEN, b"CURVE credentials are one 32-byte key", b"", b""
        key = z85_key(credentials[0])
        roles = self._domains.get(domain)
        if roles is None:
            self._log_refusal(domain, address, f"key {key.decode()} on an unknown domain")
            return _REFUSED, b"unknown domain", b"", b""
        certificate = self._lookup(key)
        if certificate is None:
            self._log_refusal(domain, address, f"untrusted key {key.decode()}")
            return _REFUSED, b"key not trusted", b"", b""
        if certificate.role not in roles:
            self._log_refusal(
                domain,
                address,
                f"{certificate.name!r} has role {certificate.role.value}, "
                f"not admitted on this domain",
            )
            return _REFUSED, b"role not admitted here", b"", b""
        metadata = encode_metadata(
            {ROLE_PROPERTY: certificate.role.value, KEY_PROPERTY: key.decode()}
        )
        return _OK, b"OK", certificate.name.encode(), metadata

    def _log_refusal(self, domain: bytes, address: bytes, why: str) -> None:
        now = self._clock()
        if now - self._log_window_start >= _LOG_WINDOW_SECONDS:
            if self._suppressed:
                logger.warning("%d more CURVE handshakes refused, not logged", self._suppressed)
            self._log_window_start, self._log_lines, self._suppressed = now, 0, 0
        if self._log_lines >= _LOG_LINES_PER_WINDOW:
            self._suppressed += 1
            return
        self._log_lines += 1
        # Domain and address come off the network's side of libzmq: repr, never raw.
        logger.warning(
            "refused a CURVE handshake from %r on domain %r: %s", address[:64], domain[:64], why
        )


def secure_server(sock: zmq.Socket[bytes], certificate: Certificate, domain: str) -> None:
    """Make `sock` a CURVE server that authenticates through ZAP on `domain`, and fails
    closed: with no ZAP handler answering, every handshake is refused. Call before bind.

    ConfigError if the certificate has no secret key, the domain is empty, or libzmq
    lacks CURVE or ZAP_ENFORCE_DOMAIN (without which it would accept any key when no
    handler answers)."""
    if certificate.secret_key is None:
        raise ConfigError(f"certificate {certificate.name!r} has no secret key to serve with")
    if not domain:
        raise ConfigError("a CURVE server needs a ZAP domain, or libzmq skips authentication")
    _require_curve()
    enforce = getattr(zmq, "ZAP_ENFORCE_DOMAIN", None)
    if enforce is None:
        raise ConfigError("this libzmq has no ZAP_ENFORCE_DOMAIN; it cannot fail closed")
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, certificate.secret_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, certificate.public_key)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    try:
        sock.setsockopt(enforce, 1)
    except zmq.ZMQError as exc:
        raise ConfigError(
            f"this libzmq refuses ZAP_ENFORCE_DOMAIN ({exc}); cannot fail closed"
        ) from exc


def secure_client(
    sock: zmq.Socket[bytes], certificate: Certificate, server_public_key: bytes
) -> None:
    """Make `sock` a CURVE client with `certificate`'s keys that talks only to the server
    holding `server_public_key` (32 bytes or Z85): an impersonator cannot complete the
    handshake. Call before connect. ConfigError if the certificate has no secret key or
    the server key is not a key."""
    if certificate.secret_key is None:
        raise ConfigError(f"certificate {certificate.name!r} has no secret key to connect with")
    try:
        server_key = z85_key(server_public_key)
    except ValueError as exc:
        raise ConfigError(f"server public key: {exc}") from None
    _require_curve()
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, certificate.public_key)
    sock.setsockopt(zmq.CURVE_SECRETKEY, certificate.secret_key)


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise ConfigError("this libzmq was built without CURVE security")


def authenticated_peer(frame: zmq.Frame, trust: TrustSet | KeyLookup) -> Certificate | None:
    """The certificate, as `trust` holds it now, of the key that sent `frame`.

    `frame` is any frame of a message received with `copy=False` on a `secure_server`
    socket. None when the connection carries no key or its key is no longer trusted:
    refuse the message then. Use it on `secure_server` sockets only: there the ZAP
    properties win over the peer's, but on a socket without CURVE nothing stops a
    hand-made peer from naming a "Public-Key" property in its own handshake. The role to
    check is the returned certificate's, which may differ from the handshake's if the
    trust dir changed since."""
    try:
        key = frame.get(KEY_PROPERTY)
    except zmq.ZMQError:
        return None
    if not isinstance(key, str):
        return None
    lookup = trust.lookup if isinstance(trust, TrustSet) else trust
    return lookup(key.encode())
