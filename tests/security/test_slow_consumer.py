"""Attack 10, replayed against a running node process: a slow consumer.

A DEALER asked for a 1 MiB value 300 times and never read the replies: the node's RSS
went from 77 MB to 684 MB in a second (519 MB after the client left), since ZeroMQ's
high-water marks count messages, not bytes. Now what one connection can make the node
hold is bounded: requests in flight per connection (`max_inflight_per_connection`), the
replies ZeroMQ queues for it (SNDHWM, about `max_reply_backlog_bytes` of the largest
replies) and the replies the node holds beside them (`max_reply_backlog_bytes`); past
that its replies are dropped (answered `overloaded` in their place when that fits) and
its requests refused, while every other client is served as before.

Also here: a pipelining client that reads loses nothing, and the peer plane takes a
merge far larger than a client frame.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from kvactors import Client
from kvactors.config import NodeConfig
from kvactors.launcher import ADMIN_CLIENT, ClusterKeys, NodeProcess, free_port_block
from kvactors.net.certs import load_certificate
from kvactors.net.peer_sockets import SocketOptions
from kvactors.net.rpc import MARKER, decode_reply, encode_call
from kvactors.net.zap import secure_client
from kvactors.testing import peer_endpoint, wait_until

MiB = 1024 * 1024
DEFAULTS = NodeConfig()
BIG = "x" * (MiB - 64)  # just under the value limit, as in the attack
ATTACK_GETS = 300
REPLY_MS = 10_000
SERVED_WITHIN = 5.0  # seconds another client may wait while the attack is on
ATTACKER_RCVBUF = 64 * 1024  # a fixed kernel receive buffer: no autotuning

# What the node may grow by during the attack, each part from a bound of its own:
# the values read for the attacker's requests in flight; the replies ZeroMQ queues for
# its connection (SNDHWM: as many as the backlog holds of the largest value); the
# backlog itself; and slack for the allocator and the interpreter. Before the bounds,
# the same attack grew the node by more than 600 MB.
RSS_GROWTH_BOUND = (
    DEFAULTS.max_inflight_per_connection * MiB
    + DEFAULTS.max_reply_backlog_bytes  # ZeroMQ's queue: SNDHWM x the largest value
    + DEFAULTS.max_reply_backlog_bytes
    + 64 * MiB
)


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """Samples a process's RSS every few milliseconds in a thread, keeping the peak."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.003):
            self.peak = max(self.peak, rss_bytes(self._pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    endpoint = f"tcp://127.0.0.1:{free_port_block(1)}"
    process = NodeProcess("victim", endpoint, log=(tmp_path / "victim.log").open("ab"))
    process.start()
    try:
        with Client(endpoint, timeout=10.0) as client:
            client.put("big", BIG)
            client.put("small", "still served")
            assert client.get("big") == BIG  # the baseline includes a read of it
        yield process
    finally:
        process.stop()
        assert process.log is not None
        process.log.close()


@contextlib.contextmanager
def dealer(endpoint: str, rcvhwm: int | None = None) -> Iterator[zmq.Socket[bytes]]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if rcvhwm is not None:
        # The attacker's own ZeroMQ must not read on its behalf: it takes one message;
        # nor its kernel, whose receive buffer would otherwise grow to tens of MB (and
        # the node's held replies drain into it, so that the node would stop seeing a
        # slow consumer for a moment).
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.RCVBUF, ATTACKER_RCVBUF)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close()


def status(node: NodeProcess) -> dict[str, Any]:
    with Client(node.endpoint, timeout=10.0) as client:
        return client.status()


def get(request_id: int, key: str = "big") -> bytes:
    return msgpack.packb({"op": "get", "key": key, "id": request_id})


def test_a_slow_consumer_cannot_grow_the_node(node: NodeProcess) -> None:
    baseline = rss_bytes(node.pid)
    with dealer(node.endpoint, rcvhwm=1) as attacker, PeakRss(node.pid) as rss:
        for request_id in range(ATTACK_GETS):
            attacker.send(get(request_id))
        wait_until(
            lambda: status(node)["slow_connections"] == 1,
            timeout=30.0,
            message="the attacker's connection never passed its reply budget",
        )
        during = status(node)
        assert during["held_reply_bytes"] <= DEFAULTS.max_reply_backlog_bytes
        assert during["slow_consumer_drops"] > 0

        # Another client is served meanwhile, big value and all.
        started = time.monotonic()
        with Client(node.endpoint, timeout=SERVED_WITHIN) as other:
            assert other.get("small") == "still served"
            assert other.get("big") == BIG
        assert time.monotonic() - started < SERVED_WITHIN

        # The attacker's further requests are refused at once, whatever they ask.
        for request_id in range(1000, 1005):
            attacker.send(get(request_id, "small"))
        wait_until(lambda: status(node)["slow_consumer_refusals"] == 5, timeout=10.0)

        # Holding replies costs no busy loop: the node waits for ZeroMQ to say a
        # queue has room.
        cpu_before = cpu_seconds(node.pid)
        time.sleep(1.0)
        assert cpu_seconds(node.pid) - cpu_before < 0.5
        growth = rss.peak - baseline
    assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / MiB:.0f} MiB"

    # Once gone, nothing is held for it any more; the counters keep what happened.
    def freed() -> bool:
        now = status(node)
        return now["slow_connections"] == 0 and now["held_replies"] == 0

    wait_until(freed, timeout=15.0, message="the attacker's replies were never freed")
    after = status(node)
    assert after["held_reply_bytes"] == 0 and after["backlogged_connections"] == 0
    assert after["slow_consumer_drops"] == during["slow_consumer_drops"]
    assert after["connection_inflight_refusals"] > 0  # 300 at once: past its bound
    assert node.running
    assert rss_bytes(node.pid) <= rss.peak + 16 * MiB


def test_a_secure_client_key_cannot_multiply_its_budget_by_opening_connections(
    tmp_path: Path,
) -> None:
    """On a secure node the budget of held replies is the client key's, over all its
    connections: four connections of one key, each flooding 1 MiB gets it never reads,
    make the node hold no more than one budget, and then every connection of that key,
    a new one too, is refused while another key is served."""
    keys = ClusterKeys.create(tmp_path / "keys", ["victim"], {ADMIN_CLIENT: "admin", "b": "read"})
    endpoint = f"tcp://127.0.0.1:{free_port_block(1)}"
    log = (tmp_path / "victim.log").open("ab")
    process = NodeProcess("victim", endpoint, log=log, keys=keys).start()
    client = load_certificate(keys.secret_key(ADMIN_CLIENT))
    server = load_certificate(keys.trust_dir / "victim.key").public_key

    def connect(stack: contextlib.ExitStack) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = stack.enter_context(zmq.Context.instance().socket(zmq.DEALER))
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.RCVBUF, ATTACKER_RCVBUF)
        secure_client(sock, client, server)
        sock.connect(endpoint)
        return sock

    def node_status() -> dict[str, Any]:
        with keys.client(endpoint, timeout=10.0) as admin:
            return admin.status()

    try:
        with keys.client(endpoint, timeout=10.0) as admin:
            admin.put("big", BIG)
        with contextlib.ExitStack() as stack:
            flooders = [connect(stack) for _ in range(4)]
            for index, sock in enumerate(flooders):
                for request_id in range(40):
                    sock.send(get(index * 100 + request_id))
            wait_until(
                lambda: node_status()["slow_consumer_drops"] > 0,
                timeout=30.0,
                message="the key never passed its reply budget",
            )
            during = node_status()
            # One budget for the key: per connection it would have been four.
            assert during["held_reply_bytes"] <= DEFAULTS.max_reply_backlog_bytes
            assert during["slow_connections"] == 1  # the key, not its connections
            # A fifth connection of the same key, with nothing held for it, is refused.
            fresh = connect(stack)
            fresh.send(get(9_999, "big"))
            assert fresh.poll(REPLY_MS)
            refusal = msgpack.unpackb(fresh.recv(), raw=False)
            assert refusal["error"]["code"] == "overloaded", refusal
            assert "unread replies" in refusal["error"]["message"]
            # Another key is served meanwhile.
            with keys.client(endpoint, "b", timeout=SERVED_WITHIN) as other:
                assert other.get("big") == BIG
        wait_until(lambda: node_status()["held_reply_bytes"] == 0, timeout=15.0)
        assert process.running
    finally:
        process.stop()
        log.close()


def test_a_slow_consumer_that_reads_at_last_gets_an_answer_to_every_request(
    node: NodeProcess,
) -> None:
    """Every request is answered exactly once: the value, or `overloaded`
    where a value did not fit (its connection's budget full, or its requests in flight
    at their bound); and the requests sent while it was slow are refused."""
    with dealer(node.endpoint, rcvhwm=1) as attacker:
        for request_id in range(ATTACK_GETS):
            attacker.send(get(request_id))
        wait_until(lambda: status(node)["slow_connections"] == 1, timeout=30.0)
        late = list(range(1000, 1005))
        for request_id in late:
            attacker.send(get(request_id, "small"))
        wait_until(lambda: status(node)["slow_consumer_refusals"] == len(late), timeout=10.0)
        answers: dict[int, dict[str, Any]] = {}
        while len(answers) < ATTACK_GETS + len(late):
            assert attacker.poll(REPLY_MS), f"{len(answers)} answers, then none"
            reply = msgpack.unpackb(attacker.recv(), raw=False)
            assert reply["id"] not in answers
            answers[reply["id"]] = reply
        values = [r for r in answers.values() if r["ok"]]
        refused = [r for r in answers.values() if not r["ok"]]
        assert all(r["value"] == BIG for r in values)
        assert all(r["error"]["code"] == "overloaded" for r in refused)
        assert len(values) >= DEFAULTS.max_reply_backlog_bytes // MiB - 1  # what was held
        for request_id in late:
            assert "unread replies" in answers[request_id]["error"]["message"]
        # Having read everything, the connection is served again.
        wait_until(lambda: status(node)["slow_connections"] == 0, timeout=10.0)
        attacker.send(get(7, "small"))
        assert attacker.poll(REPLY_MS)
        assert msgpack.unpackb(attacker.recv(), raw=False)["value"] == "still served"


def test_a_pipelining_client_that_reads_loses_nothing(node: NodeProcess) -> None:
    """64 requests in flight on one DEALER, small values, read as they come: no reply
    dropped, none refused, however often its bursts wait in the backlog."""
    before = status(node)
    total, in_flight = 5_000, 64
    sent = received = 0
    with dealer(node.endpoint) as client:
        while sent < in_flight:
            client.send(msgpack.packb({"op": "put", "key": f"k{sent}", "value": sent, "id": sent}))
            sent += 1
        while received < total:
            assert client.poll(REPLY_MS), f"no reply after {received}"
            reply = msgpack.unpackb(client.recv(), raw=False)
            assert reply["ok"] is True, reply
            received += 1
            if sent < total:
                op = {"op": "get", "key": f"k{sent % 64}", "id": sent}
                client.send(msgpack.packb(op))
                sent += 1
    after = status(node)
    for counter in (
        "overloaded",
        "slow_consumer_drops",
        "slow_consumer_refusals",
        "connection_inflight_refusals",
        "errors",
    ):
        assert after[counter] == before[counter], counter
    assert after["held_replies"] == 0


def test_the_peer_plane_takes_a_merge_far_larger_than_a_client_frame(node: NodeProcess) -> None:
    """Merges between replicas are never refused, so a key's merged state may hold N
    states at `max_state_bytes`: the peer ROUTER takes frames of N x that (and a key),
    and drops the connection for a larger one."""
    limit = SocketOptions.from_config(DEFAULTS).peer_frame_bytes
    assert limit >= DEFAULTS.replicas * DEFAULTS.max_state_bytes
    client_frame = SocketOptions.from_config(DEFAULTS).max_message_bytes
    # Three concurrent values of one key (each written with the same context: each a
    # sibling), read as the state a replica would merge: larger than any client frame.
    with Client(node.endpoint, timeout=10.0) as client:
        client.put("wide", "first")
        context = client.get_versioned("wide").context
        for index in range(3):
            client.put("wide", str(index) * (MiB - 64), context=context)
    peers = peer_endpoint(node.endpoint)
    read = encode_call(1, "store", 5.0, {"ops": [["read", b"wide"]]})
    with dealer(peers) as sock:
        sock.send_multipart([MARKER, read])
        assert sock.poll(REPLY_MS)
        state = decode_reply(sock.recv_multipart()[-1])["result"]["results"][0]
    merge = encode_call(2, "store", 5.0, {"ops": [["merge", b"merged", state]]})
    assert len(merge) > client_frame
    with dealer(peers) as sock:
        sock.send_multipart([MARKER, merge])
        assert sock.poll(REPLY_MS), "the merge was dropped"
        assert decode_reply(sock.recv_multipart()[-1])["ok"] is True
    with Client(node.endpoint, timeout=10.0) as client:
        assert len(client.get_versioned("merged").siblings) == 3
    # A frame at the limit is read (and refused as no call); one byte over, libzmq
    # drops the connection unread.
    for size, answered in ((limit, True), (limit + 1, False)):
        with dealer(peers) as sock:
            sock.send_multipart([MARKER, b"\xff" * size])
            assert bool(sock.poll(2_000 if not answered else REPLY_MS)) is answered, size
    assert node.running
