"""The transport's reply backlog on real ZeroMQ sockets: a client ROUTER with a tiny
SNDHWM, and DEALERs that do not read (RCVHWM 1, so that their own ZeroMQ does not read
for them). Replies that find a connection's queue full are held in order and go out as
it reads, woken by ZeroMQ rather than a timer; past the budget they are dropped and the
connection is slow; a connection that goes has nothing held for it any more."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from kvactors.net.reply_backlog import HELD_REPLY_OVERHEAD
from kvactors.net.transport import SocketOptions, Transport, TransportHandlers
from kvactors.testing import wait_until

REPLY = b"r" * 200_000
REQUESTS = 150  # 30 MB of replies: more than loopback's socket buffers take
LOOPBACK = "tcp://127.0.0.1:0"


class Echo:
    """Answers each client frame with REPLY once drained (on the flush), tagged with the
    request; notes what `send_to_client` said of each."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.gathered: list[list[bytes]] = []
        self.outcomes: list[bool] = []

    def on_client(self, frames: list[bytes]) -> None:
        self.gathered.append(frames)

    def on_flush(self) -> None:
        gathered, self.gathered = self.gathered, []
        for routing_id, request in gathered:
            self.outcomes.append(self.transport.send_to_client([routing_id, request + REPLY]))

    def handlers(self) -> TransportHandlers:
        def nothing(*_args: object) -> None:
            return None

        return TransportHandlers(
            client_frames=self.on_client,
            peer_request=nothing,
            peer_reply=nothing,
            flush=self.on_flush,
            tick=nothing,
            close=nothing,
        )


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def start(budget: int) -> tuple[Transport, Echo]:
    options = SocketOptions(
        max_message_bytes=1 << 20, linger_ms=0, client_send_hwm=2, reply_backlog_bytes=budget
    )
    # A long tick: only ZeroMQ's signal can wake the loop to offer held replies again.
    transport = Transport(LOOPBACK, options, peer_bind=LOOPBACK, tick_interval=30.0)
    echo = Echo(transport)
    transport.start(echo.handlers())
    return transport, echo


def slow_reader(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.connect(endpoint)
    return sock


def send_requests(sock: zmq.Socket[bytes], count: int) -> list[bytes]:
    requests = [b"%04d" % index for index in range(count)]
    for request in requests:
        sock.send(request)
    return requests


def test_held_replies_go_out_in_order_as_the_client_reads(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    transport, echo = start(budget=64 << 20)
    try:
        client = slow_reader(context, transport.endpoint)
        requests = send_requests(client, REQUESTS)
        backlog = transport.reply_backlog
        wait_until(lambda: backlog.held_replies > 0, message="nothing was ever held")
        got = []
        for _ in requests:
            assert client.poll(5_000), f"{len(got)} replies, then none"
            got.append(client.recv()[:4])
        assert got == requests
        assert all(echo.outcomes) and len(echo.outcomes) == len(requests)
        wait_until(lambda: not backlog.held and not backlog.slow)
        assert backlog.dropped == 0 and backlog.held_total > 0
        client.close()
    finally:
        transport.stop()


def test_past_the_budget_replies_are_dropped_and_freed_when_the_client_goes(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    per_reply = 4 + len(REPLY) + 5 + HELD_REPLY_OVERHEAD  # a ROUTER's routing id: 5 bytes
    transport, echo = start(budget=5 * per_reply)
    try:
        client = slow_reader(context, transport.endpoint)
        other = slow_reader(context, transport.endpoint)
        send_requests(client, 400)  # 80 MB: far past what the socket buffers take
        backlog = transport.reply_backlog
        wait_until(lambda: len(echo.outcomes) == 400)
        assert echo.outcomes.count(False) == backlog.dropped > 0
        assert backlog.held_replies <= 5 and backlog.held_bytes <= 5 * per_reply

        def held_after_one_more() -> bool:
            """Once the socket buffers are full, a reply stays held."""
            client.send(b"more")
            return backlog.held_replies > 0

        wait_until(held_after_one_more, interval=0.05)
        # Another connection is served meanwhile.
        other.send(b"meanwhile")
        assert other.poll(5_000)
        assert other.recv().startswith(b"meanwhile")
        client.close()
        # Its connection gone, nothing is held for it any more, and no timer was needed
        # (libzmq reports the connection gone, or takes the replies into the queue it
        # is tearing down).
        wait_until(lambda: not backlog.held and not backlog.slow, timeout=10.0)
        assert backlog.held_bytes == 0 and backlog.held_replies == 0
        other.close()
    finally:
        transport.stop()
