"""A real `kvactors node` process, talked to the way users and other nodes talk to it.

Every test here uses real processes and real ZeroMQ sockets: the `kvactors.Client`, raw
REQ and DEALER sockets in msgpack and JSON, node-to-node RPC from an in-process node,
shutdown on signals with clients mid-flight, and the `kvactors` commands run as
subprocesses. Waits are bounded by deadlines (generous: the machine is shared); nothing
sleeps in the hope that something happened meanwhile.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import pytest
import zmq
from _sockets import connected  # tests/integration is on the path, as for conftest

from kvactors import (
    ActorSystem,
    BadRequestError,
    Client,
    KVActorsError,
    NodeConfig,
    RequestTimeoutError,
    TooLargeError,
    UnavailableError,
)
from kvactors.errors import PeerUnreachableError

# How long any single reply may take before a test gives up: far above the few
# milliseconds a reply takes, so a busy shared machine does not fail a test.
REPLY_TIMEOUT = 10.0
# Slack allowed on top of a timeout under test before "fails within its timeout" fails.
MARGIN = 3.0
MAX_VALUE_BYTES = 1024 * 1024  # NodeConfig's default
MAX_KEY_BYTES = 64 * 1024  # NodeConfig's default


class Node(Protocol):
    """What these tests use of the conftest's `NodeProcess`."""

    name: str
    endpoint: str

    def signal(self, number: int) -> None: ...
    def wait(self, timeout: float) -> int: ...
    def log(self) -> str: ...


StartNode = Callable[..., Node]


def unused_endpoint() -> str:
    """A loopback endpoint where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def receive(sock: zmq.Socket[bytes], timeout: float = REPLY_TIMEOUT) -> list[bytes]:
    """The next message on `sock`, or a test failure after `timeout` seconds."""
    if not sock.poll(int(timeout * 1000), zmq.POLLIN):
        pytest.fail(f"no reply within {timeout}s")
    frames: list[bytes] = sock.recv_multipart()
    return frames


def pack(message: Any) -> bytes:
    packed: bytes = msgpack.packb(message)
    return packed


def unpack(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False)


def ask_msgpack(req: zmq.Socket[bytes], message: Any) -> Any:
    """One round trip on a REQ socket in msgpack; the reply is exactly one frame."""
    req.send(pack(message))
    frames = receive(req)
    assert len(frames) == 1, frames
    return unpack(frames[0])


def ask_json(req: zmq.Socket[bytes], text: str) -> Any:
    """One round trip on a REQ socket in JSON; the reply must be JSON too."""
    req.send(text.encode())
    frames = receive(req)
    assert len(frames) == 1, frames
    assert frames[0][:1] == b"{", f"a JSON request got a non-JSON reply: {frames[0]!r:.200}"
    return json.loads(frames[0])


# -- the Client ---------------------------------------------------------------------------


def test_client_put_get_delete(node: Node) -> None:
    value = {"name": "Ada", "langs": ["en", "fr"], "blob": b"\x00\xff", "big": 2**40, "f": 1.5}
    missing = object()
    with Client(node.endpoint, timeout=REPLY_TIMEOUT) as client:
        client.put("user:1", value)
        assert client.get("user:1") == value
        assert client.get(b"user:1") == value  # a str key is stored as its UTF-8 bytes
        assert client.get("user:2", missing) is missing
        assert client.get("user:2") is None
        client.put("user:1", "replaced")
        assert client.get("user:1") == "replaced"
        assert client.delete("user:1") is True
        assert client.get("user:1", missing) is missing
        assert client.delete("user:1") is False


def test_client_ping_and_status(node: Node) -> None:
    with Client(node.endpoint, timeout=REPLY_TIMEOUT) as client:
        round_trip = client.ping()
        assert 0 < round_trip < REPLY_TIMEOUT
        before = client.status()
        client.put("counted", 1)
        after = client.status()
    assert after["node"] == node.name
    assert after["endpoint"] == node.endpoint
    assert after["partitions"] == NodeConfig().partitions
    assert after["inflight"] == 0
    assert after["requests"] - before["requests"] == 2  # the put and this status
    assert after["errors"] == before["errors"]


def test_client_batches_span_several_frames(node: Node) -> None:
    # 2500 items: the client splits them into three requests of at most 1000.
    items = {f"batch:{i}": {"i": i, "even": i % 2 == 0} for i in range(2500)}
    absent = [f"absent:{i}" for i in range(10)]
    with Client(node.endpoint, timeout=REPLY_TIMEOUT) as client:
        client.put_many(items)
        assert client.get_many([*items, *absent]) == items
        client.put_many([("batch:0", "new"), (b"batch:1", b"raw")])
        assert client.get_many(["batch:0", "batch:1", "batch:2"]) == {
            "batch:0": "new",
            "batch:1": b"raw",
            "batch:2": {"i": 2, "even": True},
        }


def test_client_cuts_batches_of_large_values_to_frames_a_node_accepts(node: Node) -> None:
    # 20 values of 500 KB: 10 MB, more than the 2.3 MiB frame a node takes. Sent whole,
    # the node's socket would drop it with the connection and the client time out.
    items = {f"large:{i}": bytes([i]) * 500_000 for i in range(20)}
    with Client(node.endpoint, timeout=REPLY_TIMEOUT, retries=0) as client:
        client.put_many(items)
        assert client.get_many(list(items)) == items
        # A single request no frame can hold is refused here, at once, not timed out.
        started = time.monotonic()
        with pytest.raises(TooLargeError, match="max_frame_bytes"):
            client.put("huge", b"x" * 3_000_000)
        assert time.monotonic() - started < 1.0
        assert client.get("large:3") == items["large:3"]  # the node still serves


def test_client_errors_are_typed(node: Node) -> None:
    with Client(node.endpoint, timeout=REPLY_TIMEOUT) as client:
        with pytest.raises(TooLargeError) as too_large:
            client.put("big", b"x" * (MAX_VALUE_BYTES + 1))
        assert too_large.value.code == "too_large"
        with pytest.raises(TooLargeError):
            client.get("k" * (MAX_KEY_BYTES + 1))
        with pytest.raises(TooLargeError):
            client.put_many({"fine": 1, "big": b"x" * (MAX_VALUE_BYTES + 1)})
        with pytest.raises(BadRequestError) as bad:
            client.put(123, "an int is not a key")  # type: ignore[arg-type]
        assert type(bad.value) is BadRequestError
        # One node holds one replica of each key: asking for two cannot be met.
        with pytest.raises(UnavailableError):
            client.put("quorum", 1, w=2)
        with pytest.raises(UnavailableError):
            client.get("quorum", r=2)
        with pytest.raises(UnavailableError):
            client.delete("quorum", w=2)
        # None of those was applied, and the node still serves.
        assert client.get("big") is None
        assert client.get("fine") is None
        assert client.get("quorum") is None
        client.put("quorum", 1, w=1)
        assert client.get("quorum", r=1) == 1


def test_client_times_out_then_fails_over(node: Node) -> None:
    dead = unused_endpoint()
    with Client(dead, timeout=0.3, retries=1) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            client.get("k")
        assert time.monotonic() - started < 2 * 0.3 + MARGIN
    with Client([dead, node.endpoint], timeout=1.0, retries=1) as client:
        client.put("failover", "reached")
        assert client.endpoint == node.endpoint
        assert client.get("failover") == "reached"


# -- raw sockets -----------------------------------------------------------------------------


def test_req_socket_in_msgpack(node: Node) -> None:
    with connected(zmq.REQ, node.endpoint) as req:
        value = {"name": "Ada", "tags": [1, 2.5, None, True], "raw": b"\x00"}
        assert ask_msgpack(req, {"op": "put", "key": "raw:1", "value": value, "id": 7}) == {
            "ok": True,
            "id": 7,
        }
        got = ask_msgpack(req, {"op": "get", "key": "raw:1", "id": "g-1"})
        assert (got["ok"], got["id"], got["found"], got["value"]) == (True, "g-1", True, value)
        assert ask_msgpack(req, {"op": "get", "key": b"raw:2", "id": b"\x01\x02"}) == {
            "ok": True,
            "id": b"\x01\x02",
            "found": False,
            "context": b"\x01\x00",  # never written: an empty clock
        }
        many = ask_msgpack(req, {"op": "get_many", "keys": ["raw:1", "raw:2"], "id": 8})
        assert many["id"] == 8
        assert [item.get("value") for item in many["results"]] == [value, None]
        assert [item["found"] for item in many["results"]] == [True, False]
        assert ask_msgpack(req, {"op": "delete", "key": "raw:1", "id": 9}) == {
            "ok": True,
            "id": 9,
            "deleted": True,
        }
        assert ask_msgpack(req, {"op": "ping"}) == {"ok": True}  # no id sent, none echoed
        status = ask_msgpack(req, {"op": "status", "id": 10})
        assert (status["ok"], status["id"], status["status"]["node"]) == (True, 10, node.name)

        missing_key = ask_msgpack(req, {"op": "get", "id": 11})
        assert (missing_key["ok"], missing_key["id"]) == (False, 11)
        assert missing_key["error"]["code"] == "bad_request"
        assert "key" in missing_key["error"]["message"]
        unknown = ask_msgpack(req, {"op": "frobnicate", "id": 12})
        assert (unknown["ok"], unknown["id"], unknown["error"]["code"]) == (
            False,
            12,
            "bad_request",
        )
        req.send(b"\xc1")  # a byte msgpack never uses
        garbage = unpack(receive(req)[0])
        assert garbage["ok"] is False
        assert garbage["error"]["code"] == "bad_request"
        assert "id" not in garbage
        # After all that, the node still serves this socket.
        assert ask_msgpack(req, {"op": "ping", "id": 13}) == {"ok": True, "id": 13}


def test_req_socket_in_json(node: Node) -> None:
    with connected(zmq.REQ, node.endpoint) as req:
        # The seed's `operation` alias, and bytes as {"$bytes": base64}.
        put = '{"operation": "put", "key": "json:1", "value": {"$bytes": "AAE="}, "id": "p"}'
        assert ask_json(req, put) == {"ok": True, "id": "p"}
        reply = ask_json(req, '{"op": "get", "key": "json:1", "id": 1}')
        context = reply.pop("context")
        assert reply == {"ok": True, "id": 1, "found": True, "value": {"$bytes": "AAE="}}
        # The causal context travels as {"$bytes": base64} too, and is a node's own.
        assert set(context) == {"$bytes"} and base64.b64decode(context["$bytes"])
        # A msgpack client reads the same bytes back.
        assert ask_msgpack(req, {"op": "get", "key": "json:1"})["value"] == b"\x00\x01"
        document = {"a": [1, 2.5, None, True], "nested": {"b": "c"}}
        put = json.dumps({"operation": "put", "key": {"$bytes": "AP8="}, "value": document})
        assert ask_json(req, put) == {"ok": True}
        assert ask_msgpack(req, {"op": "get", "key": b"\x00\xff"})["value"] == document
        assert ask_json(req, ' \n {"operation": "ping", "id": 2}') == {"ok": True, "id": 2}

        no_key = ask_json(req, '{"operation": "get", "id": 5}')
        assert (no_key["ok"], no_key["id"], no_key["error"]["code"]) == (False, 5, "bad_request")
        broken = ask_json(req, '{"op": ')
        assert (broken["ok"], broken["error"]["code"]) == (False, "bad_request")
        too_big = json.dumps({"op": "put", "key": "k", "value": "x" * MAX_VALUE_BYTES, "id": 6})
        answer = ask_json(req, too_big)
        assert (answer["ok"], answer["id"], answer["error"]["code"]) == (False, 6, "too_large")


@pytest.mark.parametrize("envelope", [[], [b""]], ids=["bare", "empty-delimiter"])
def test_dealer_keeps_100_requests_in_flight(node: Node, envelope: list[bytes]) -> None:
    count = 100
    with connected(zmq.DEALER, node.endpoint) as dealer:

        def replies_by_id(expected: int) -> dict[Any, dict[str, Any]]:
            """Read `expected` replies, each keeping the envelope, each id exactly once."""
            seen: dict[Any, dict[str, Any]] = {}
            for _ in range(expected):
                frames = receive(dealer)
                assert frames[:-1] == envelope
                reply = unpack(frames[-1])
                assert reply["ok"] is True, reply
                assert reply["id"] not in seen, f"id {reply['id']!r} answered twice"
                seen[reply["id"]] = reply
            return seen

        for i in range(count):  # every request is sent before any reply is read
            message = {"op": "put", "key": f"flight:{i}", "value": {"i": i}, "id": i}
            dealer.send_multipart([*envelope, pack(message)])
        assert set(replies_by_id(count)) == set(range(count))

        # Reads, sent in reverse order with string ids: each reply is matched by its id.
        for i in reversed(range(count)):
            message = {"op": "get", "key": f"flight:{i}", "id": f"get-{i}"}
            dealer.send_multipart([*envelope, pack(message)])
        replies = replies_by_id(count)
        assert set(replies) == {f"get-{i}" for i in range(count)}
        for i in range(count):
            assert replies[f"get-{i}"]["value"] == {"i": i}

        # Replies on one connection keep their order: nothing else was queued before this.
        dealer.send_multipart([*envelope, pack({"op": "ping", "id": "barrier"})])
        assert unpack(receive(dealer)[-1]) == {"ok": True, "id": "barrier"}


# -- node-to-node RPC ------------------------------------------------------------------------


def outcome(future: Future[Any], within: float) -> tuple[Any, BaseException | None, float]:
    """(result, error, seconds waited) of an RPC's Future, failing the test after `within`."""
    started = time.monotonic()
    try:
        return future.result(timeout=within), None, time.monotonic() - started
    except KVActorsError as exc:  # first: RequestTimeoutError is also a TimeoutError
        return None, exc, time.monotonic() - started
    except TimeoutError:
        pytest.fail(f"the RPC neither answered nor failed within {within}s")


def test_rpc_ping_and_store_between_two_nodes(
    start_node: StartNode, local_node: ActorSystem
) -> None:
    peer = start_node("b")
    result, error, _ = outcome(
        local_node.rpc(peer.peer_endpoint, "ping", timeout=5.0), REPLY_TIMEOUT
    )
    assert error is None
    assert result == {"node": "b"}

    key, value = b"rpc:1", {"from": "a", "n": [1, 2, 3]}
    ops = [["put", key, pack(value)], ["get", key]]
    result, error, _ = outcome(
        local_node.rpc(peer.peer_endpoint, "store", {"ops": ops}), REPLY_TIMEOUT
    )
    assert error is None
    assert result == {"results": [None, pack(value)]}
    with Client(peer.endpoint, timeout=REPLY_TIMEOUT) as client:
        assert client.get("rpc:1") == value
        client.put("rpc:2", "written by a client")
    assert local_node.client.get(key) is None  # the call went to b, not to a's own store

    ops = [["get", b"rpc:2"], ["delete", b"rpc:1"], ["get", b"rpc:1"]]
    result, error, _ = outcome(
        local_node.rpc(peer.peer_endpoint, "store", {"ops": ops}), REPLY_TIMEOUT
    )
    assert error is None
    assert result == {"results": [pack("written by a client"), True, None]}

    # The peer's refusals come back as the same typed errors.
    bad = local_node.rpc(peer.peer_endpoint, "store", {"ops": [["put", "a str key"]]})
    _, error, _ = outcome(bad, REPLY_TIMEOUT)
    assert type(error) is BadRequestError
    big = [["put", b"rpc:big", pack(b"x" * MAX_VALUE_BYTES)]]
    _, error, _ = outcome(local_node.rpc(peer.peer_endpoint, "store", {"ops": big}), REPLY_TIMEOUT)
    assert isinstance(error, TooLargeError), error
    with Client(peer.endpoint, timeout=REPLY_TIMEOUT) as client:
        assert client.get("rpc:big") is None


# Node "a" in a process of its own: it starts, calls node "b" over RPC and prints what
# came back. Both ends are then real node processes with their own transports.
RPC_FROM_A_PROCESS = """
import sys, msgpack
from kvactors import ActorSystem
peer = sys.argv[1]
with ActorSystem(name="a", bind="tcp://127.0.0.1:0") as a:
    print(a.rpc(peer, "ping", timeout=5.0).result(timeout=10))
    ops = [["put", b"rpc:proc", msgpack.packb("from a")], ["get", b"rpc:proc"]]
    print(a.rpc(peer, "store", {"ops": ops}, timeout=5.0).result(timeout=10))
"""


def test_rpc_between_two_node_processes(start_node: StartNode) -> None:
    peer = start_node("b")
    result = subprocess.run(
        [sys.executable, "-c", RPC_FROM_A_PROCESS, peer.peer_endpoint],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "{'node': 'b'}",
        "{'results': [None, " + repr(pack("from a")) + "]}",
    ]
    with Client(peer.endpoint, timeout=REPLY_TIMEOUT) as client:
        assert client.get("rpc:proc") == "from a"


def test_rpc_to_an_endpoint_where_nothing_listens(local_node: ActorSystem) -> None:
    timeout = 0.5
    future = local_node.rpc(unused_endpoint(), "ping", timeout=timeout)
    _, error, waited = outcome(future, timeout + MARGIN)
    assert isinstance(error, PeerUnreachableError), error
    assert waited < timeout + MARGIN


def test_rpc_to_a_stopped_node_times_out(start_node: StartNode, local_node: ActorSystem) -> None:
    peer = start_node("b")
    # A first call connects a's DEALER to b, so the next one is really sent.
    assert outcome(local_node.rpc(peer.peer_endpoint, "ping"), REPLY_TIMEOUT)[0] == {"node": "b"}
    timeout = 1.0
    peer.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        ops = {"ops": [["put", b"frozen", pack(1)]]}
        ping = local_node.rpc(peer.peer_endpoint, "ping", timeout=timeout)
        store = local_node.rpc(peer.peer_endpoint, "store", ops, timeout=timeout)
        for future in (ping, store):
            _, error, _ = outcome(future, timeout + MARGIN)
            assert type(error) is RequestTimeoutError, error
        waited = time.monotonic() - started
    finally:
        peer.signal(signal.SIGCONT)
    assert timeout <= waited < timeout + MARGIN
    # b serves again; the late replies to the calls that timed out are ignored.
    assert outcome(local_node.rpc(peer.peer_endpoint, "ping"), REPLY_TIMEOUT)[0] == {"node": "b"}


# -- shutdown -----------------------------------------------------------------------------------


@dataclass
class Hammer:
    """A thread writing with its own Client until a write fails."""

    endpoint: str
    number: int
    client_timeout: float
    warmed_up: threading.Event = field(default_factory=threading.Event)
    give_up: threading.Event = field(default_factory=threading.Event)
    writes: int = 0
    error: BaseException | None = None
    failed_at: float = 0.0
    thread: threading.Thread | None = None

    def start(self) -> Hammer:
        # A daemon, so that a client that does hang fails this test without hanging pytest.
        self.thread = threading.Thread(target=self._run, name=f"hammer-{self.number}", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        with Client(self.endpoint, timeout=self.client_timeout, retries=0) as client:
            while not self.give_up.is_set():
                try:
                    client.put(f"hammer:{self.number}:{self.writes % 100}", self.writes)
                except Exception as exc:  # anything, so an unexpected kind is reported
                    self.error, self.failed_at = exc, time.monotonic()
                    return
                self.writes += 1
                if self.writes == 20:
                    self.warmed_up.set()


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_stops_a_busy_node_cleanly(node: Node, signal_number: signal.Signals) -> None:
    client_timeout = 1.0
    hammers = [Hammer(node.endpoint, n, client_timeout).start() for n in range(4)]
    try:
        for hammer in hammers:
            assert hammer.warmed_up.wait(REPLY_TIMEOUT), f"hammer {hammer.number}: {hammer.error}"
        signalled = time.monotonic()
        node.signal(signal_number)
        try:
            code = node.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the node did not exit within 5s of {signal_number.name}")
        exited = time.monotonic()
        assert code == 0, node.log()
        for hammer in hammers:
            assert hammer.thread is not None
            hammer.thread.join(
                timeout=max(0.0, exited + client_timeout + MARGIN - time.monotonic())
            )
            assert not hammer.thread.is_alive(), f"hammer {hammer.number} hangs"
    finally:
        for hammer in hammers:
            hammer.give_up.set()
    for hammer in hammers:
        assert isinstance(hammer.error, RequestTimeoutError | UnavailableError), hammer.error
        assert hammer.failed_at >= signalled, f"hammer {hammer.number} failed before the signal"
    log = node.log()
    assert f"received {signal_number.name}; stopping" in log
    assert f"node {node.name} stopped" in log
    assert "Traceback" not in log


# -- the kvactors command -------------------------------------------------------------------------


def kvactors_together(*commands: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run `kvactors ARGS...` for each of `commands` at once and collect the results.

    At once because each is a fresh interpreter taking about half a second to start.
    """
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "kvactors", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    try:
        results = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=60)
            results.append(
                subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
            )
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_commands_against_a_node(node: Node) -> None:
    live, dead = node.endpoint, unused_endpoint()
    with Client(live, timeout=REPLY_TIMEOUT) as client:
        client.put_many({"seeded:1": {"a": [1, 2]}, "seeded:2": "plain text", "seeded:3": 3})
    results = kvactors_together(
        ["put", "-e", live, "cli:1", '{"a": [1, 2]}'],
        ["put", "-e", live, "cli:2", "plain text"],
        ["get", "-e", live, "seeded:1"],
        ["get", "-e", dead, "-e", live, "--timeout", "1", "seeded:2"],
        ["get", "-e", live, "cli:missing"],
        ["delete", "-e", live, "seeded:3"],
        ["delete", "-e", live, "cli:missing"],
        ["ping", "-e", live],
        ["ping", "-e", dead, "-e", live, "--timeout", "1"],
        ["status", "-e", live, "--json"],
        ["get", "-e", dead, "--timeout", "0.3", "seeded:1"],
    )
    put_json, put_text, got, fallback, missing, deleted, not_there = results[:7]
    pong, pong_fallback, status, unreachable = results[7:]

    for put in (put_json, put_text):
        assert (put.returncode, put.stdout) == (0, "OK\n"), put.stderr
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {"a": [1, 2]}
    assert (fallback.returncode, fallback.stdout) == (0, '"plain text"\n'), fallback.stderr
    assert (missing.returncode, missing.stdout) == (1, "")
    assert "not found: cli:missing" in missing.stderr
    assert (deleted.returncode, deleted.stdout) == (0, "deleted\n"), deleted.stderr
    assert (not_there.returncode, not_there.stdout) == (0, "(was not there)\n"), not_there.stderr
    for ping in (pong, pong_fallback):
        assert ping.returncode == 0, ping.stderr
        # The endpoint that answered, even when an earlier one did not.
        assert re.fullmatch(rf"pong from {re.escape(live)} in \d+\.\d\d ms\n", ping.stdout)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["node"] == node.name
    assert unreachable.returncode == 1
    assert unreachable.stdout == ""
    assert "error (timeout)" in unreachable.stderr
    with Client(live, timeout=REPLY_TIMEOUT) as client:
        assert client.get("cli:1") == {"a": [1, 2]}  # stored as JSON's value, not as text
        assert client.get("cli:2") == "plain text"
        assert client.get("seeded:3", "gone") == "gone"


HELP_MENTIONS = {
    "node": ["--name", "--bind", "--join", "--partitions", "--config", "SIGTERM"],
    "leave": ["--endpoint", "--timeout"],
    "remove": ["--endpoint", "--timeout", "member"],
    "cluster": ["--nodes", "--base-port", "Ctrl-C"],
    "get": ["--endpoint", "--timeout", "key"],
    "put": ["--endpoint", "--timeout", "key value"],
    "delete": ["--endpoint", "--timeout", "key"],
    "ping": ["--endpoint", "--timeout"],
    "status": ["--endpoint", "--timeout", "--json", "--plan"],
}


def test_command_help_and_usage_errors() -> None:
    commands = sorted(HELP_MENTIONS)
    *helps, no_endpoint = kvactors_together(
        *([command, "--help"] for command in commands), ["get", "some-key"]
    )
    for command, result in zip(commands, helps, strict=True):
        assert result.returncode == 0, f"kvactors {command} --help: {result.stderr}"
        assert result.stdout.startswith(f"usage: kvactors {command}"), result.stdout
        for mention in HELP_MENTIONS[command]:
            assert mention in result.stdout, f"kvactors {command} --help lacks {mention}"
    assert no_endpoint.returncode == 2
    assert "--endpoint" in no_endpoint.stderr


def test_envelopes_with_extra_routing_frames_are_kept(node: Node) -> None:
    context = zmq.Context.instance()
    # A REQ socket that correlates its requests adds a request-id frame to the envelope.
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.REQ_CORRELATE, 1)
    req.setsockopt(zmq.REQ_RELAXED, 1)
    req.setsockopt(zmq.LINGER, 0)
    # A DEALER standing in for a proxy: routing frames of its own before the delimiter.
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(node.endpoint)
        req.send(msgpack.packb({"op": "ping", "id": 1}))
        assert req.poll(int(REPLY_TIMEOUT * 1000)), "no reply to a correlated REQ"
        assert msgpack.unpackb(req.recv()) == {"ok": True, "id": 1}

        dealer.connect(node.endpoint)
        dealer.send_multipart([b"hop-1", b"hop-2", b"", msgpack.packb({"op": "ping", "id": 2})])
        assert dealer.poll(int(REPLY_TIMEOUT * 1000)), "no reply through a routed envelope"
        *envelope, reply = dealer.recv_multipart()
        assert envelope == [b"hop-1", b"hop-2", b""]
        assert msgpack.unpackb(reply) == {"ok": True, "id": 2}
    finally:
        req.close()
        dealer.close()
