"""Node-to-node RPC between nodes of different formats, against a real node (in this
process, with its real transport): the node refuses a call in another RPC format with an
error naming both formats and keeps serving; as a caller it reports a peer that answers
in another format at once, naming both, instead of waiting for its timeout."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import msgpack
import pytest
import zmq
from _sockets import connected  # tests/integration is on the path, as for conftest

from kvactors import ActorSystem, Client
from kvactors.net.rpc import MARKER, RPC_FORMAT, RpcFormatError, decode_reply, encode_call

# Far above what a reply takes: a busy shared machine must not fail these tests.
REPLY_TIMEOUT = 10.0
OTHER = RPC_FORMAT + 1


def exchange(sock: zmq.Socket[bytes], frames: list[bytes]) -> list[bytes]:
    sock.send_multipart(frames)
    assert sock.poll(int(REPLY_TIMEOUT * 1000)), "the node did not answer"
    return sock.recv_multipart()


def call_map(call_id: int, op: str) -> bytes:
    packed: bytes = msgpack.packb({"id": call_id, "op": op, "timeout": 5.0})
    return packed


def endpoint_of(system: ActorSystem) -> str:
    endpoint = system.endpoint
    assert endpoint is not None
    return endpoint


def peer_endpoint_of(system: ActorSystem) -> str:
    endpoint = system.peer_endpoint
    assert endpoint is not None
    return endpoint


def test_a_call_in_another_format_is_refused_naming_both_and_the_node_serves_on(
    local_node: ActorSystem,
) -> None:
    endpoint = endpoint_of(local_node)
    refusals = {
        f"in RPC format {OTHER}": bytes((OTHER,)) + call_map(1, "ping"),
        "without a format byte (from a node older than RPC format 1)": call_map(2, "ping"),
    }
    with connected(zmq.DEALER, peer_endpoint_of(local_node)) as sock:
        for found, payload in refusals.items():
            marker, answer = exchange(sock, [MARKER, payload])
            assert marker == MARKER
            # The refusal is in the node's own format, and names both formats.
            reply = decode_reply(answer)
            assert reply["ok"] is False and reply["id"] is None, reply
            assert reply["error"] == {
                "code": "bad_request",
                "message": f"an RPC call {found}; this node speaks RPC format {RPC_FORMAT}",
            }
        # Counted and shown in status, so an operator sees the mixed versions.
        assert local_node.status()["peer_plane"]["calls_in_other_formats"] == len(refusals)
        # The same connection, in this format: served as ever.
        marker, answer = exchange(sock, [MARKER, encode_call(3, "ping", 5.0, {})])
        assert decode_reply(answer) == {"id": 3, "ok": True, "result": {"node": "a"}}
    with Client(endpoint, timeout=REPLY_TIMEOUT) as client:
        client.put("after", "the refusals")
        assert client.get("after") == "the refusals"


@contextlib.contextmanager
def peer_of_another_format() -> Iterator[str]:
    """A ROUTER that answers every call in RPC format OTHER, as a newer node would."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            if sock.poll(50):
                routing_id, *_ = sock.recv_multipart()
                reply = bytes((OTHER,)) + msgpack.packb({"answer": "in a format of its own"})
                sock.send_multipart([routing_id, MARKER, reply])

    thread = threading.Thread(target=answer, name="peer of another format", daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(REPLY_TIMEOUT)
        sock.close()


def test_the_caller_reports_a_peer_that_answers_in_another_format(local_node: ActorSystem) -> None:
    timeout = 8.0
    with peer_of_another_format() as peer:
        started = time.monotonic()
        future = local_node.rpc(peer, "ping", timeout=timeout)
        with pytest.raises(RpcFormatError) as refused:
            future.result(timeout=REPLY_TIMEOUT)
        # At the answer, not at the call's deadline.
        assert time.monotonic() - started < timeout
    assert str(refused.value) == (
        f"{peer} answered in RPC format {OTHER}; this node speaks RPC format {RPC_FORMAT}"
    )
    assert local_node.status()["peer_plane"]["peers_in_other_formats"] == [
        {"endpoint": peer, "format": OTHER}
    ]
    # Calls to a node of this format still work.
    own_peer_plane = peer_endpoint_of(local_node)
    assert local_node.rpc(own_peer_plane, "ping", timeout=5.0).result(REPLY_TIMEOUT) == {
        "node": "a"
    }
