"""CURVE authentication over real sockets: our ZAP responder (kvactors/net/zap.py), the
trust set behind it, and a server that fails closed when no responder answers."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from kvactors.errors import ConfigError
from kvactors.net.certs import Certificate, Role, TrustSet, load_certificate, write_key_pair
from kvactors.net.zap import (
    CLIENT_DOMAIN,
    KEY_PROPERTY,
    PEER_DOMAIN,
    ROLE_PROPERTY,
    USER_ID_PROPERTY,
    ZAP_ENDPOINT,
    ZapResponder,
    authenticated_peer,
    encode_metadata,
    secure_client,
    secure_server,
)
from kvactors.testing import wait_until

# How long a refused client is watched for a message that must never come, after the
# refusal itself was seen.
QUIET_SECONDS = 0.5
HANDSHAKE_SECONDS = 5.0


@dataclass
class Keys:
    """Secret certificates by name; the trust dir holds the public ones of `trusted`."""

    trust_dir: Path
    secret: dict[str, Certificate]

    def __getitem__(self, name: str) -> Certificate:
        return self.secret[name]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    trust_dir, key_dir = tmp_path / "trust", tmp_path / "keys"
    trust_dir.mkdir()
    secret = {}
    for name, role, trusted in [
        ("node-a", Role.NODE, True),  # the server
        ("node-b", Role.NODE, True),
        ("bob", Role.WRITE, True),
        ("reader", Role.READ, True),
        ("mallory", Role.ADMIN, False),
    ]:
        public_path, secret_path = write_key_pair(key_dir, name, role)
        if trusted:
            public_path.rename(trust_dir / public_path.name)
        secret[name] = load_certificate(secret_path)
    return Keys(trust_dir, secret)


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    # A context of its own: the ZAP endpoint is per context.
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


class PolledResponder:
    """A ZapResponder polled by a thread of its own, as the transport thread will."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], trust: Any) -> None:
        self.responder = ZapResponder(context, trust)
        self._stop = threading.Event()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="zap-responder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.responder.socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(20):
                    self.responder.handle_ready()
        except BaseException as exc:  # the test fails on it in stop()
            self.failure = exc
        finally:
            self.responder.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        assert not self._thread.is_alive()
        assert self.failure is None, self.failure


@pytest.fixture
def trust(keys: Keys) -> TrustSet:
    return TrustSet.load(keys.trust_dir)


@pytest.fixture
def responder(context: zmq.Context[zmq.Socket[bytes]], trust: TrustSet) -> Iterator[ZapResponder]:
    polled = PolledResponder(context, trust)
    yield polled.responder
    polled.stop()


class Server:
    """A CURVE ROUTER on a loopback port, with a monitor of its handshakes."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        cert: Certificate,
        domain: str,
        *,
        enforce_domain: bool = True,
    ) -> None:
        self.certificate = cert
        self.socket: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        secure_server(self.socket, cert, domain)
        if not enforce_domain:  # only to show what the option prevents
            self.socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 0)
        self.monitor = self.socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        )
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def next_handshake(self) -> tuple[zmq.Event, int]:
        """The next handshake outcome: (event, value: the ZAP status or an errno)."""
        if not self.monitor.poll(HANDSHAKE_SECONDS * 1000):
            raise AssertionError(f"no handshake ended within {HANDSHAKE_SECONDS}s")
        event = recv_monitor_message(self.monitor)
        return zmq.Event(event["event"]), int(event["value"])

    def receive(self) -> list[zmq.Frame]:
        if not self.socket.poll(HANDSHAKE_SECONDS * 1000):
            raise AssertionError(f"no message within {HANDSHAKE_SECONDS}s")
        frames: list[zmq.Frame] = self.socket.recv_multipart(copy=False)
        return frames

    def receives_nothing(self) -> bool:
        return not self.socket.poll(QUIET_SECONDS * 1000)


Connect = Callable[..., zmq.Socket[bytes]]


@pytest.fixture
def connect(context: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Connect]:
    """connect(certificate, server, server_key=None): a CURVE DEALER connected to `server`
    that pins `server_key` (default: the server's own). Every socket stays referenced
    until the test ends: one garbage collected closes its connection mid-handshake."""
    sockets: list[zmq.Socket[bytes]] = []

    def connect_one(
        cert: Certificate, server: Server, server_key: bytes | None = None
    ) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        secure_client(sock, cert, server_key or server.certificate.public_key)
        sock.connect(server.endpoint)
        sockets.append(sock)
        return sock

    yield connect_one
    for sock in sockets:
        sock.close()


# Admitted and refused -----------------------------------------------------------------


def test_a_trusted_client_gets_through_and_its_messages_name_it_and_its_role(
    context: zmq.Context[zmq.Socket[bytes]],
    connect: Connect,
    keys: Keys,
    trust: TrustSet,
    responder: ZapResponder,
) -> None:
    server = Server(context, keys["node-a"], CLIENT_DOMAIN)
    bob = connect(keys["bob"], server)
    bob.send(b"hello")
    assert server.next_handshake()[0] is zmq.Event.HANDSHAKE_SUCCEEDED
    routing_id, body = server.receive()
    assert body.bytes == b"hello"
    for frame in (routing_id, body):  # every frame carries the connection's properties
        assert frame.get(USER_ID_PROPERTY) == "bob"
        assert frame.get(ROLE_PROPERTY) == "write"
        assert frame.get(KEY_PROPERTY) == keys["bob"].public_key.decode()
    assert authenticated_peer(body, trust) == keys["bob"].public()
    assert responder.accepted == 1 and responder.refused == 0
    # The reply goes back over the encrypted connection.
    server.socket.send_multipart([routing_id.bytes, b"welcome"])
    assert bob.poll(HANDSHAKE_SECONDS * 1000) and bob.recv() == b"welcome"


def test_every_role_is_admitted_on_the_client_domain(
    context: zmq.Context[zmq.Socket[bytes]], connect: Connect, keys: Keys, responder: ZapResponder
) -> None:
    server = Server(context, keys["node-a"], CLIENT_DOMAIN)
    for name in ("reader", "bob", "node-b"):
        connect(keys[name], server).send(name.encode())
        assert server.next_handshake()[0] is zmq.Event.HANDSHAKE_SUCCEEDED, name
        frames = server.receive()
        assert frames[0].get(USER_ID_PROPERTY) == name
        assert frames[0].get(ROLE_PROPERTY) == keys[name].role.value


def test_an_untrusted_key_never_gets_a_message_through(
    context: zmq.Context[zmq.Socket[bytes]], connect: Connect, keys: Keys, responder: ZapResponder
) -> None:
    server = Server(context, keys["node-a"], CLIENT_DOMAIN)
    connect(keys["mallory"], server).send(b"let me in")
    assert server.next_handshake() == (zmq.Event.HANDSHAKE_FAILED_AUTH, 400)
    wait_until(lambda: responder.refused >= 1, message="the responder answered no 400")
    assert responder.accepted == 0
    assert server.receives_nothing()


def test_the_peer_domain_admits_node_keys_only(
    context: zmq.Context[zmq.Socket[bytes]], connect: Connect, keys: Keys, responder: ZapResponder
) -> None:
    server = Server(context, keys["node-a"], PEER_DOMAIN)
    connect(keys["bob"], server).send(b"merge this")
    assert server.next_handshake() == (zmq.Event.HANDSHAKE_FAILED_AUTH, 400)
    assert server.receives_nothing()
    connect(keys["node-b"], server).send(b"gossip")
    # The write key's client retries its handshake meanwhile: skip its refusals.
    deadline = time.monotonic() + HANDSHAKE_SECONDS
    while (outcome := server.next_handshake())[0] is not zmq.Event.HANDSHAKE_SUCCEEDED:
        assert outcome == (zmq.Event.HANDSHAKE_FAILED_AUTH, 400)
        assert time.monotonic() < deadline, "node-b's handshake never succeeded"
    frames = server.receive()
    assert frames[1].bytes == b"gossip"
    assert (frames[1].get(USER_ID_PROPERTY), frames[1].get(ROLE_PROPERTY)) == ("node-b", "node")


def test_a_client_pinning_another_server_key_gets_nowhere(
    context: zmq.Context[zmq.Socket[bytes]], connect: Connect, keys: Keys, responder: ZapResponder
) -> None:
    server = Server(context, keys["node-a"], CLIENT_DOMAIN)
    # bob expects node-b: whoever answers at this endpoint without node-b's secret key
    # is an impersonator, and the handshake cannot complete.
    bob = connect(keys["bob"], server, server_key=keys["node-b"].public_key)
    bob.send(b"secret")
    outcome = server.next_handshake()
    assert outcome[0] is not zmq.Event.HANDSHAKE_SUCCEEDED, outcome
    assert server.receives_nothing()
    assert responder.accepted == 0


def test_a_removed_certificate_is_refused_on_new_connections_and_loses_open_ones(
    context: zmq.Context[zmq.Socket[bytes]],
    connect: Connect,
    keys: Keys,
    trust: TrustSet,
    responder: ZapResponder,
) -> None:
    server = Server(context, keys["node-a"], CLIENT_DOMAIN)
    bob = connect(keys["bob"], server)
    bob.send(b"before")
    assert server.next_handshake()[0] is zmq.Event.HANDSHAKE_SUCCEEDED
    assert authenticated_peer(server.receive()[1], trust) is not None

    (keys.trust_dir / "bob.key").unlink()
    assert trust.reload() is True

    # The open connection still delivers (libzmq does not cut it), but its key no longer
    # maps to anything: a per-message check refuses it.
    bob.send(b"after")
    frames = server.receive()
    assert frames[1].get(USER_ID_PROPERTY) == "bob"  # what the handshake said
    assert authenticated_peer(frames[1], trust) is None  # what the trust set says now
    # A new connection with the same key is refused at the handshake.
    connect(keys["bob"], server).send(b"again")
    assert server.next_handshake() == (zmq.Event.HANDSHAKE_FAILED_AUTH, 400)
    assert server.receives_nothing()


# Failing closed -----------------------------------------------------------------------


def test_with_no_responder_bound_every_connection_is_refused(
    context: zmq.Context[zmq.Socket[bytes]], connect: Connect, keys: Keys
) -> None:
    server = Server(context, keys["node-a"], CLIENT_DOMAIN)
    for name in ("bob", "node-b", "mallory"):
        connect(keys[name], server).send(b"anyone home?")
    for _ in range(3):
        assert server.next_handshake() == (zmq.Event.HANDSHAKE_FAILED_NO_DETAIL, errno.EFAULT)
    assert server.receives_nothing()


def test_a_closed_responder_fails_closed_too(
    context: zmq.Context[zmq.Socket[bytes]], connect: Connect, keys: Keys, trust: TrustSet
) -> None:
    polled = PolledResponder(context, trust)
    polled.stop()  # closes the responder
    server = Server(context, keys["node-a"], CLIENT_DOMAIN)
    connect(keys["bob"], server).send(b"hello")
    assert server.next_handshake() == (zmq.Event.HANDSHAKE_FAILED_NO_DETAIL, errno.EFAULT)
    assert server.receives_nothing()


def test_without_zap_enforce_domain_libzmq_would_let_anyone_in(
    context: zmq.Context[zmq.Socket[bytes]], connect: Connect, keys: Keys
) -> None:
    """Why secure_server sets ZAP_ENFORCE_DOMAIN: the same server without it, and no
    responder, admits an untrusted key."""
    server = Server(context, keys["node-a"], CLIENT_DOMAIN, enforce_domain=False)
    connect(keys["mallory"], server).send(b"in")
    assert server.receive()[1].bytes == b"in"


# The responder's answers, request by request ------------------------------------------


@pytest.fixture
def zap_peer(context: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
    """A DEALER speaking to the responder as libzmq does, to send it anything."""
    sock: zmq.Socket[bytes] = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ZAP_ENDPOINT)
    return sock


def ask(responder: ZapResponder, sock: zmq.Socket[bytes], *request: bytes) -> list[bytes]:
    """Send one request (after the empty delimiter) and the responder's reply."""
    sock.send_multipart([b"", *request])
    replies: list[list[bytes]] = []

    def answered() -> bool:
        responder.handle_ready()
        if sock.poll(0):
            replies.append(sock.recv_multipart())
        return bool(replies)

    wait_until(answered, timeout=HANDSHAKE_SECONDS)
    return replies[0]


def curve_request(domain: str, key: bytes, request_id: bytes = b"7") -> list[bytes]:
    raw = zmq.utils.z85.decode(key)
    return [b"1.0", request_id, domain.encode(), b"10.0.0.9", b"", b"CURVE", raw]


def test_the_reply_follows_rfc_27_with_metadata_in_zmtp_form(
    context: zmq.Context[zmq.Socket[bytes]],
    zap_peer: zmq.Socket[bytes],
    keys: Keys,
    trust: TrustSet,
) -> None:
    responder = ZapResponder(context, trust)
    reply = ask(responder, zap_peer, *curve_request(CLIENT_DOMAIN, keys["reader"].public_key))
    key = keys["reader"].public_key
    assert reply == [
        b"",
        b"1.0",
        b"7",
        b"200",
        b"OK",
        b"reader",
        b"\x04Role\x00\x00\x00\x04read" + b"\x0aPublic-Key\x00\x00\x00\x28" + key,
    ]
    responder.close()


@pytest.mark.parametrize(
    ("request_frames", "status"),
    [
        ([b"1.0", b"1", CLIENT_DOMAIN.encode(), b"addr", b"", b"NULL"], b"400"),
        ([b"1.0", b"1", CLIENT_DOMAIN.encode(), b"addr", b"", b"PLAIN", b"u", b"p"], b"400"),
        ([b"1.0", b"1", CLIENT_DOMAIN.encode(), b"addr", b"", b"CURVE", b"short"], b"500"),
        ([b"1.0", b"1", CLIENT_DOMAIN.encode(), b"addr", b"", b"CURVE"], b"500"),
        ([b"1.0", b"1", CLIENT_DOMAIN.encode(), b"addr", b"", b"CURVE", b"k" * 32, b"x"], b"500"),
        ([b"2.0", b"1", CLIENT_DOMAIN.encode(), b"addr", b"", b"CURVE", b"k" * 32], b"500"),
        ([b"1.0", b"1", b"elsewhere", b"addr", b"", b"CURVE", b"k" * 32], b"400"),
        ([b"1.0", b"1", CLIENT_DOMAIN.encode(), b"addr", b"", b"CURVE", b"k" * 32], b"400"),
        ([b"1.0"], b"500"),
        ([], b"500"),
    ],
)
def test_refused_and_malformed_requests_get_400_or_500_and_no_user(
    context: zmq.Context[zmq.Socket[bytes]],
    zap_peer: zmq.Socket[bytes],
    trust: TrustSet,
    request_frames: list[bytes],
    status: bytes,
) -> None:
    responder = ZapResponder(context, trust)
    reply = ask(responder, zap_peer, *request_frames)
    assert reply[3] == status and reply[5:] == [b"", b""]
    assert responder.accepted == 0
    responder.close()


def test_an_unknown_domain_is_refused_even_for_a_trusted_node(
    context: zmq.Context[zmq.Socket[bytes]],
    zap_peer: zmq.Socket[bytes],
    keys: Keys,
    trust: TrustSet,
) -> None:
    responder = ZapResponder(context, trust)
    reply = ask(responder, zap_peer, *curve_request("other-app", keys["node-b"].public_key))
    assert reply[3] == b"400"
    responder.close()


def test_a_lookup_that_raises_gets_500_and_the_responder_goes_on(
    context: zmq.Context[zmq.Socket[bytes]],
    zap_peer: zmq.Socket[bytes],
    keys: Keys,
    trust: TrustSet,
) -> None:
    calls: list[bytes] = []

    def flaky(key: bytes) -> Certificate | None:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("disk on fire")
        return trust.lookup(key)

    responder = ZapResponder(context, flaky)
    key = keys["bob"].public_key
    assert ask(responder, zap_peer, *curve_request(CLIENT_DOMAIN, key))[3] == b"500"
    assert ask(responder, zap_peer, *curve_request(CLIENT_DOMAIN, key))[3] == b"200"
    assert calls == [key, key] and responder.malformed == 1 and responder.accepted == 1
    responder.close()


def test_a_message_without_an_envelope_is_dropped_and_the_next_is_answered(
    context: zmq.Context[zmq.Socket[bytes]],
    zap_peer: zmq.Socket[bytes],
    keys: Keys,
    trust: TrustSet,
) -> None:
    responder = ZapResponder(context, trust)
    zap_peer.send_multipart([b"no", b"delimiter"])
    wait_until(lambda: responder.handle_ready() == 1)
    assert responder.malformed == 1
    assert ask(responder, zap_peer, *curve_request(CLIENT_DOMAIN, keys["bob"].public_key))[3] == (
        b"200"
    )
    assert not zap_peer.poll(0)  # the dropped one got no reply
    responder.close()


def test_handle_ready_without_requests_returns_at_once(
    context: zmq.Context[zmq.Socket[bytes]], trust: TrustSet
) -> None:
    responder = ZapResponder(context, trust)
    started = time.monotonic()
    assert responder.handle_ready() == 0
    assert time.monotonic() - started < 0.5
    responder.close()
    responder.close()  # twice is harmless
    assert responder.handle_ready() == 0  # and a closed one answers nothing, raising nothing


def test_one_responder_per_context(
    context: zmq.Context[zmq.Socket[bytes]], trust: TrustSet
) -> None:
    first = ZapResponder(context, trust)
    with pytest.raises(zmq.ZMQError):
        ZapResponder(context, trust)
    first.close()


def test_refusals_are_logged_with_a_ceiling(
    context: zmq.Context[zmq.Socket[bytes]],
    zap_peer: zmq.Socket[bytes],
    keys: Keys,
    trust: TrustSet,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    responder = ZapResponder(context, trust, clock=lambda: now[0])
    stranger = keys["mallory"].public_key
    for _ in range(30):
        ask(responder, zap_peer, *curve_request(CLIENT_DOMAIN, stranger))
    refused = [r for r in caplog.records if "refused a CURVE handshake" in r.getMessage()]
    assert len(refused) == 20 and responder.refused == 30
    assert stranger.decode() in refused[0].getMessage()
    now[0] = 61.0
    ask(responder, zap_peer, *curve_request(CLIENT_DOMAIN, stranger))
    assert any("10 more CURVE handshakes refused" in r.getMessage() for r in caplog.records)
    responder.close()


# Socket options -----------------------------------------------------------------------


def test_secure_server_sets_curve_and_a_domain_that_fails_closed(
    context: zmq.Context[zmq.Socket[bytes]], keys: Keys
) -> None:
    sock: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
    secure_server(sock, keys["node-a"], PEER_DOMAIN)
    assert sock.getsockopt(zmq.CURVE_SERVER) == 1
    assert sock.getsockopt(zmq.ZAP_DOMAIN) == PEER_DOMAIN.encode()
    assert sock.getsockopt(zmq.ZAP_ENFORCE_DOMAIN) == 1
    sock.close()


def test_secure_options_refuse_what_cannot_work(
    context: zmq.Context[zmq.Socket[bytes]], keys: Keys
) -> None:
    sock: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
    with pytest.raises(ConfigError, match="needs a ZAP domain"):
        secure_server(sock, keys["node-a"], "")
    public_only = keys["node-a"].public()
    with pytest.raises(ConfigError, match="no secret key"):
        secure_server(sock, public_only, CLIENT_DOMAIN)
    with pytest.raises(ConfigError, match="no secret key"):
        secure_client(sock, public_only, keys["node-b"].public_key)
    with pytest.raises(ConfigError, match="server public key"):
        secure_client(sock, keys["bob"], b"not a key")
    sock.close()


def test_metadata_is_encoded_as_zmtp_properties() -> None:
    assert (
        encode_metadata({"A": "xy", "Bc": ""}) == b"\x01A\x00\x00\x00\x02xy\x02Bc\x00\x00\x00\x00"
    )
    with pytest.raises(ValueError):
        encode_metadata({"": "x"})
    with pytest.raises(ValueError):
        encode_metadata({"n" * 256: "x"})
