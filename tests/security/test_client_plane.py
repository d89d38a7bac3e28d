"""Attacks from the client endpoint, replayed against a running node process.

Node-to-node calls (`pull`, `store` reads and merges) used to be served on the client
endpoint to anyone who sent the RPC marker; a routing id presented twice could abort
the process. Each must now fail, and the node keep serving with its data intact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from kvactors import Client
from kvactors.launcher import NodeProcess, free_port_block
from kvactors.net.rpc import MARKER, decode_reply, encode_call
from kvactors.testing import peer_endpoint

REPLY_MS = 10_000
SECRET = "the value an attacker wants"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    logs = tmp_path_factory.mktemp("client-plane")
    endpoint = f"tcp://127.0.0.1:{free_port_block(1)}"
    process = NodeProcess("victim", endpoint, log=(Path(logs) / "victim.log").open("ab"))
    process.start()
    try:
        with Client(endpoint, timeout=10.0) as client:
            client.put("secret", SECRET)
        yield process
    finally:
        process.stop()
        assert process.log is not None
        process.log.close()


@contextlib.contextmanager
def dealer(endpoint: str, routing_id: bytes | None = None) -> Iterator[zmq.Socket[bytes]]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close()


def exchange(sock: zmq.Socket[bytes], frames: list[bytes]) -> list[bytes]:
    sock.send_multipart(frames)
    assert sock.poll(REPLY_MS), "the node did not answer"
    return sock.recv_multipart()


def refused_on_the_client_plane(reply: list[bytes]) -> None:
    assert len(reply) == 1, reply
    answer = msgpack.unpackb(reply[0], raw=False)
    assert answer["ok"] is False and answer["error"]["code"] == "bad_request", answer
    assert "peer endpoint" in answer["error"]["message"]
    assert SECRET.encode() not in reply[0]


def test_pull_and_store_reads_are_refused_on_the_client_endpoint(node: NodeProcess) -> None:
    """Attack 1: reading every key through the `pull` and `store read` RPCs."""
    pull = encode_call(1, "pull", 5.0, {"partitions": list(range(64)), "limit": 1000})
    read = encode_call(2, "store", 5.0, {"ops": [["read", b"secret"]]})
    with dealer(node.endpoint) as sock:
        for call in (pull, read):
            refused_on_the_client_plane(exchange(sock, [MARKER, call]))
    # The same read on the peer plane is served (to nodes: in secure mode, node keys only).
    with dealer(peer_endpoint(node.endpoint)) as sock:
        answer = decode_reply(exchange(sock, [MARKER, read])[-1])
    assert answer["ok"] is True


def test_a_forged_merge_is_refused_on_the_client_endpoint(node: NodeProcess) -> None:
    """Attack 2: writing past the quorum with a forged dot through `store merge`."""
    # A well-formed state (the key's own, read on the peer plane), sent as a merge: on
    # the client endpoint even a valid call is refused unread.
    read = encode_call(2, "store", 5.0, {"ops": [["read", b"secret"]]})
    with dealer(peer_endpoint(node.endpoint)) as sock:
        state = decode_reply(exchange(sock, [MARKER, read])[-1])["result"]["results"][0]
    merge = encode_call(3, "store", 5.0, {"ops": [["merge", b"another-key", state]]})
    with dealer(node.endpoint) as sock:
        refused_on_the_client_plane(exchange(sock, [MARKER, merge]))
    with Client(node.endpoint, timeout=10.0) as client:
        assert client.get("secret") == SECRET
        assert client.get("another-key") is None


def test_a_routing_id_presented_twice_cannot_abort_the_node(node: NodeProcess) -> None:
    """Attack 9: two DEALERs with one routing id while 1 MiB replies stream to it (with
    ROUTER_HANDOVER set, libzmq aborted the process). The second connection is refused;
    the first keeps being served, and the node lives on."""
    big = "x" * ((1 << 20) - 64)  # just under the value limit
    with Client(node.endpoint, timeout=10.0) as client:
        client.put("big", big)
    get_big = msgpack.packb({"op": "get", "key": "big", "id": 1})
    with dealer(node.endpoint, b"X") as first:
        assert exchange(first, [get_big])  # the id is taken
        for _ in range(20):
            with dealer(node.endpoint, b"X") as second:
                for _ in range(5):
                    first.send(get_big)
                    second.send(get_big)
                for _ in range(5):
                    assert first.poll(REPLY_MS), "the first connection was not served"
                    assert msgpack.unpackb(first.recv(), raw=False)["value"] == big
    assert node.running
    with Client(node.endpoint, timeout=10.0) as client:
        assert client.get("secret") == SECRET
