"""The transport on real ZeroMQ sockets over loopback: frames in and out through a
handler, calls from other threads, node-to-node sends, ticks, failure and stop."""

from __future__ import annotations

import functools
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from kvactors.errors import ConfigError
from kvactors.net.transport import SocketOptions, Transport, TransportHandlers
from kvactors.testing import wait_until

OPTIONS = SocketOptions(max_message_bytes=1 << 20, linger_ms=0)
LOOPBACK = "tcp://127.0.0.1:0"


class Recorder:
    """A transport handler that notes every callback and the thread it ran on.

    Client messages are echoed, gathered until `on_flush` as a real handler would;
    `on_close` answers whatever `pending_at_close` holds.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.events: list[str] = []
        self.client_frames: list[list[bytes]] = []
        self.peer_frames: list[tuple[str, list[bytes]]] = []
        self.peer_requests: list[list[bytes]] = []
        self.ticks: list[float] = []
        self.threads: set[str] = set()
        self.echo = True
        self.gathered: list[list[bytes]] = []
        self.pending_at_close: list[list[bytes]] = []
        self.fail_on: bytes | None = None

    def _note(self, event: str) -> None:
        self.events.append(event)
        self.threads.add(threading.current_thread().name)

    def on_client_frames(self, frames: list[bytes]) -> None:
        self._note("client")
        if frames[-1] == self.fail_on:
            raise RuntimeError("the handler broke")
        self.client_frames.append(frames)
        if self.echo:
            self.gathered.append(frames)

    def on_peer_request(self, frames: list[bytes]) -> None:
        self._note("peer request")
        self.peer_requests.append(frames)

    def on_peer_frames(self, endpoint: str, frames: list[bytes]) -> None:
        self._note("peer")
        self.peer_frames.append((endpoint, frames))

    def on_flush(self) -> None:
        self._note("flush")
        gathered, self.gathered = self.gathered, []
        for frames in gathered:
            self.transport.send_to_client(frames)

    def on_tick(self, now: float) -> None:
        self._note("tick")
        self.ticks.append(now)

    def on_close(self) -> None:
        self._note("close")
        for frames in self.pending_at_close:
            self.transport.send_to_client(frames)

    def handlers(self) -> TransportHandlers:
        return TransportHandlers(
            client_frames=self.on_client_frames,
            peer_request=self.on_peer_request,
            peer_reply=self.on_peer_frames,
            flush=self.on_flush,
            tick=self.on_tick,
            close=self.on_close,
        )


StartTransport = Callable[..., tuple[Transport, Recorder]]


@pytest.fixture
def start_transport() -> Iterator[StartTransport]:
    """A factory: `start_transport(name=..., tick_interval=...)` -> (transport, handler)."""
    started: list[Transport] = []

    def start(
        name: str = "transport", tick_interval: float = 10.0, **kwargs: object
    ) -> tuple[Transport, Recorder]:
        transport = Transport(
            LOOPBACK, OPTIONS, peer_bind=LOOPBACK, name=name, tick_interval=tick_interval
        )
        handler = Recorder(transport)
        transport.start(handler.handlers(), **kwargs)  # type: ignore[arg-type]
        started.append(transport)
        return transport, handler

    yield start
    for transport in started:
        transport.stop()


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def dealer(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, identity: bytes
) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(endpoint)
    return sock


def receive(sock: zmq.Socket[bytes], timeout: float = 5.0) -> list[bytes]:
    assert sock.poll(int(timeout * 1000)), f"no message within {timeout}s"
    return sock.recv_multipart()


def on_transport_thread(transport: Transport, call: Callable[[], object]) -> object:
    """Run `call` on the transport thread and return its result."""
    done = threading.Event()
    result: list[object] = []

    def run() -> None:
        result.append(call())
        done.set()

    assert transport.call_soon(run)
    assert done.wait(5.0), "the call did not run"
    return result[0]


def test_binds_a_resolved_loopback_port(start_transport: StartTransport) -> None:
    transport, _ = start_transport()
    assert transport.running
    assert transport.endpoint.startswith("tcp://127.0.0.1:")
    assert not transport.endpoint.endswith(":0")


def test_a_taken_port_fails_the_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        transport = Transport(f"tcp://127.0.0.1:{port}", OPTIONS, name="refused")
        with pytest.raises(ConfigError, match="cannot bind"):
            transport.start(Recorder(transport).handlers())
    assert not transport.running
    assert not transport.call_soon(lambda: None)  # a transport that never ran takes no calls
    transport.stop()
    assert "refused" not in {t.name for t in threading.enumerate()}


def test_client_frames_in_and_replies_out(
    start_transport: StartTransport, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    transport, handler = start_transport(name="echo")
    client = dealer(context, transport.endpoint, b"client-1")
    client.send_multipart([b"", b"hello", b"world"])
    assert receive(client) == [b"", b"hello", b"world"]
    # The ROUTER hands the handler the routing id first, then the frames as sent.
    assert handler.client_frames == [[b"client-1", b"", b"hello", b"world"]]
    assert handler.threads == {"echo"}
    assert transport.stats.frames_in == 1
    assert transport.stats.frames_out == 1


def test_many_clients_each_get_their_replies_in_order(
    start_transport: StartTransport, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    transport, handler = start_transport()
    clients = [dealer(context, transport.endpoint, b"c%d" % n) for n in range(3)]
    messages = 300
    for n in range(messages):
        clients[n % 3].send(b"%d" % n)
    for index, client in enumerate(clients):
        got = [receive(client)[0] for _ in range(index, messages, 3)]
        assert got == [b"%d" % n for n in range(index, messages, 3)]
    # Replies leave only on a flush, so one came after the last message.
    assert handler.events.count("client") == messages
    assert handler.events[-1] == "flush"


def test_work_queued_while_the_loop_is_busy_is_flushed_together(
    start_transport: StartTransport,
) -> None:
    transport, handler = start_transport()
    busy, release = threading.Event(), threading.Event()

    def block() -> None:
        busy.set()
        release.wait(5.0)

    assert transport.call_soon(block)
    assert busy.wait(5.0)
    for n in range(10):
        assert transport.call_soon(functools.partial(handler.events.append, f"call {n}"))
    release.set()
    wait_until(lambda: "call 9" in handler.events and handler.events[-1] == "flush")
    first = handler.events.index("call 0")
    assert handler.events[first : first + 11] == [*(f"call {n}" for n in range(10)), "flush"]


def test_call_soon_runs_on_the_transport_thread_promptly(start_transport: StartTransport) -> None:
    transport, _ = start_transport(name="loop")  # ticks every 10 s: only a wake-up helps
    assert not transport.in_loop_thread()
    began = time.monotonic()
    where = on_transport_thread(transport, lambda: threading.current_thread().name)
    assert where == "loop"
    assert time.monotonic() - began < 2.0
    assert on_transport_thread(transport, transport.in_loop_thread) is True


def test_calls_from_many_threads_all_run_in_order_per_thread(
    start_transport: StartTransport,
) -> None:
    transport, _ = start_transport()
    seen: list[tuple[int, int]] = []

    def sender(thread: int) -> None:
        for n in range(500):
            assert transport.call_soon(functools.partial(seen.append, (thread, n)))

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: len(seen) == 2000, message=lambda: f"{len(seen)} of 2000 calls ran")
    for t in range(4):
        assert [n for thread, n in seen if thread == t] == list(range(500))


def test_a_call_made_on_the_loop_runs_in_the_same_turn(start_transport: StartTransport) -> None:
    transport, handler = start_transport()
    order: list[tuple[str, int]] = []

    def outer() -> None:
        order.append(("outer", len(handler.events)))
        assert transport.call_soon(lambda: order.append(("inner", len(handler.events))))

    on_transport_thread(transport, outer)
    wait_until(lambda: len(order) == 2)
    # Nothing (no flush, no frames) came between: it was drained with the call that queued it.
    assert order == [("outer", order[0][1]), ("inner", order[0][1])]


def test_a_failing_call_does_not_stop_the_transport(start_transport: StartTransport) -> None:
    transport, _ = start_transport()

    def broken() -> None:
        raise ValueError("a faulty callback")

    assert transport.call_soon(broken)
    assert on_transport_thread(transport, lambda: "still running") == "still running"
    assert transport.running


def test_peers_send_to_each_other(start_transport: StartTransport) -> None:
    a, a_handler = start_transport(name="a")
    b, b_handler = start_transport(name="b")
    b_handler.echo = False
    assert b.peer_endpoint is not None and b.peer_endpoint != b.endpoint

    # IMMEDIATE: a send before the connection is up is dropped, so keep trying.
    def send() -> bool:
        return bool(on_transport_thread(a, lambda: a.send_to_peer(b.peer_endpoint, [b"ping"])))

    wait_until(send, message="a could not reach b")
    wait_until(lambda: b_handler.peer_requests)
    envelope, body = b_handler.peer_requests[0][:-1], b_handler.peer_requests[0][-1]
    assert len(envelope) == 1  # the routing id b's peer ROUTER gave a's DEALER
    assert body == b"ping"
    assert b_handler.client_frames == []  # the peer plane is not the client plane

    on_transport_thread(b, lambda: b.reply_to_peer([envelope[0], b"pong"]))
    wait_until(lambda: a_handler.peer_frames)
    assert a_handler.peer_frames == [(b.peer_endpoint, [b"pong"])]
    assert a_handler.threads == {"a"}


def test_a_send_to_an_unreachable_peer_is_dropped(start_transport: StartTransport) -> None:
    transport, _ = start_transport()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        nobody = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    sent = on_transport_thread(transport, lambda: transport.send_to_peer(nobody, [b"x"]))
    assert sent is False
    assert transport.stats.peer_send_dropped == 1
    on_transport_thread(transport, lambda: transport.disconnect_peer(nobody))
    on_transport_thread(transport, lambda: transport.disconnect_peer(nobody))  # twice: no-op


def test_a_reply_to_a_client_that_is_gone_is_counted(start_transport: StartTransport) -> None:
    transport, _ = start_transport()
    on_transport_thread(transport, lambda: transport.send_to_client([b"nobody", b"late"]))
    assert transport.stats.unroutable == 1
    assert transport.running


def test_ticks_come_about_every_interval(start_transport: StartTransport) -> None:
    _, handler = start_transport(name="ticking", tick_interval=0.02)
    wait_until(lambda: len(handler.ticks) >= 5, message="fewer than 5 ticks")
    ticks = list(handler.ticks)
    assert ticks == sorted(ticks)
    assert all(later - earlier >= 0.015 for earlier, later in itertools.pairwise(ticks))
    assert handler.threads == {"ticking"}


def test_stop_answers_what_is_pending_then_closes(
    start_transport: StartTransport, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    transport, handler = start_transport(name="stopping")
    handler.echo = False
    client = dealer(context, transport.endpoint, b"waiting")
    client.send(b"question")
    wait_until(lambda: handler.client_frames)
    handler.pending_at_close = [[b"waiting", b"shutting down"]]
    taken = transport.call_soon(lambda: handler.events.append("last call"))

    transport.stop()

    assert taken
    assert handler.events.count("close") == 1
    assert "last call" in handler.events
    assert handler.events[-1] == "flush"  # what on_close gathered went out
    assert receive(client) == [b"shutting down"]  # the sockets worked during on_close
    assert not transport.running
    assert not transport.call_soon(lambda: None)
    assert "stopping" not in {t.name for t in threading.enumerate()}
    # A new thread often gets the id of the one that ended: it is not the loop.
    seen: list[bool] = []
    for _ in range(5):
        later = threading.Thread(target=lambda: seen.append(transport.in_loop_thread()))
        later.start()
        later.join()
    assert seen == [False] * 5
    transport.stop()  # twice: no-op


def test_a_failing_handler_stops_the_transport_and_reports(
    start_transport: StartTransport, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    failures: list[BaseException] = []
    transport, handler = start_transport(name="failing", on_failure=failures.append)
    handler.fail_on = b"break"
    client = dealer(context, transport.endpoint, b"breaker")
    client.send(b"break")
    wait_until(lambda: failures, message="on_failure was not called")
    assert isinstance(failures[0], RuntimeError)
    wait_until(lambda: not transport.running)
    assert not transport.call_soon(lambda: None)
    assert handler.events == ["client"]  # a handler that broke is not called again
    wait_until(lambda: "failing" not in {t.name for t in threading.enumerate()})
