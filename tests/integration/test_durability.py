"""Durable storage across real crashes: `kvactors node --storage lmdb`, killed with SIGKILL.

Every node is a separate process writing real LMDB files under the test's temporary
directory, with the default `fsync = "always"`. Writes go over a plain DEALER socket, so
the test knows exactly which puts were acknowledged: a reply received, even after the
kill, is an acknowledgement the node made, and must survive. Puts still in flight at the
kill are logged: they may or may not be there.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest
import zmq

from kvactors import Client
from kvactors.errors import InternalError
from kvactors.launcher import LocalCluster, NodeProcess, free_port_block

logger = logging.getLogger(__name__)

IN_FLIGHT = 32
VALUE_PAD = b"x" * 64


@dataclass
class WriteLog:
    """What a writer learned: the value each acknowledged key must hold, and the puts
    whose outcome is unknown (sent, never answered)."""

    acknowledged: dict[str, bytes] = field(default_factory=dict)
    unknown: dict[str, bytes] = field(default_factory=dict)
    sent: int = 0


def _value(key: str, round_: int) -> bytes:
    return f"{key}@{round_}".encode() + VALUE_PAD


class PutLoad:
    """Keeps IN_FLIGHT puts outstanding over one DEALER per endpoint, recording in `log`
    which were acknowledged."""

    def __init__(self, endpoints: list[str], log: WriteLog, keys: Iterator[str], round_: int):
        self._log, self._keys, self._round = log, keys, round_
        self._pending: dict[int, tuple[str, bytes]] = {}
        self._sockets: list[zmq.Socket[bytes]] = []
        self._poller = zmq.Poller()
        for endpoint in endpoints:
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            self._sockets.append(sock)
            self._poller.register(sock, zmq.POLLIN)

    def run_until(self, stop_at: float) -> None:
        for _ in range(IN_FLIGHT):
            self._send_next()
        while time.monotonic() < stop_at:
            for sock, _ in self._poller.poll(50):
                while sock.get(zmq.EVENTS) & zmq.POLLIN:
                    self._settle(sock.recv())
                    self._send_next()

    def collect_late(self, wait: float = 0.3) -> None:
        """After the crash: replies that left the nodes before they died are
        acknowledgements too; what is still pending then is unknown."""
        deadline = time.monotonic() + wait
        for sock in self._sockets:
            while sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                self._settle(sock.recv())
            sock.close()
        self._log.unknown = dict(self._pending.values())

    def _send_next(self) -> None:
        key = next(self._keys)
        value = _value(key, self._round)
        request_id = self._log.sent
        self._log.sent += 1
        self._pending[request_id] = (key, value)
        request = {"op": "put", "key": key, "value": value, "id": request_id}
        self._sockets[request_id % len(self._sockets)].send(msgpack.packb(request))

    def _settle(self, frame: bytes) -> None:
        reply = msgpack.unpackb(frame)
        key, value = self._pending.pop(reply["id"])
        if reply.get("ok"):
            self._log.acknowledged[key] = value


def check_readback(endpoint: str, log: WriteLog, round_: int) -> None:
    """Every acknowledged key holds its value (or the value of a later, unknown put)."""
    keys = list(log.acknowledged)
    found: dict[str, object] = {}
    with Client(endpoint, timeout=30.0) as client:
        for start in range(0, len(keys), 2_000):
            found.update(client.get_many(keys[start : start + 2_000]))
    lost = [key for key in keys if found.get(key) not in _allowed(log, key)]
    unknown_present = sum(1 for key, value in log.unknown.items() if found.get(key) == value)
    logger.info(
        "round %d: %d acknowledged keys all checked, %d lost; %d puts in flight at the kill, "
        "%d of them present after the restart",
        round_,
        len(keys),
        len(lost),
        len(log.unknown),
        unknown_present,
    )
    assert lost == [], f"round {round_}: {len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
    # What a restarted node reads back is on its disk: it is what later rounds must keep.
    log.acknowledged.update((key, found[key]) for key in keys)  # type: ignore[misc]
    log.unknown.clear()


def _allowed(log: WriteLog, key: str) -> tuple[bytes, bytes]:
    """The acknowledged value, or a later put's whose outcome is unknown."""
    acknowledged = log.acknowledged[key]
    return acknowledged, log.unknown.get(key, acknowledged)


def key_stream(rng: random.Random, log: WriteLog, round_: int) -> Iterator[str]:
    """Mostly new keys; one put in eight rewrites a key acknowledged in an earlier round."""
    earlier = list(log.acknowledged)[-1_000:]
    number = 0
    while True:
        if earlier and rng.random() < 0.125:
            yield rng.choice(earlier)
        else:
            number += 1
            yield f"key-{round_}-{number}"


def kill_loop(tmp_path: Path, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    port = free_port_block(1)
    node = NodeProcess(
        "durable",
        f"tcp://127.0.0.1:{port}",
        ["--storage", "lmdb", "--data-dir", str(tmp_path / "data")],
    )
    log = WriteLog()
    try:
        for round_ in range(cycles):
            node.start(timeout=60)
            if round_:
                check_readback(node.endpoint, log, round_)
            keys = key_stream(rng, log, round_)
            stop_at = time.monotonic() + rng.uniform(0.2, 1.2)
            load = PutLoad([node.endpoint], log, keys, round_)
            load.run_until(stop_at)
            os.kill(node.pid, signal.SIGKILL)
            node.process.wait(timeout=10)  # type: ignore[union-attr]
            load.collect_late()
        node.start(timeout=60)
        check_readback(node.endpoint, log, cycles)
        assert len(log.acknowledged) > cycles * 20, "too few writes to prove anything"
    finally:
        node.stop()


@pytest.mark.timeout(300)
def test_kill_loop_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """4 cycles of kill -9 at a random moment under pipelined writes (CI's short run)."""
    kill_loop(tmp_path, cycles=4, seed=7)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_kill_loop_long(tmp_path: Path) -> None:
    """The long run: 100 cycles."""
    kill_loop(tmp_path, cycles=100, seed=2026)


# In CI the fault suite's lmdb-kill-all scenario runs this case on five nodes, twice.
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_whole_cluster_killed_at_once_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    """A 3-node lmdb cluster (N=3, W=2) killed with SIGKILL all at once under load."""
    rng = random.Random(11)
    log = WriteLog()
    with LocalCluster(
        3, base_port=free_port_block(3), data_dir=tmp_path / "data", log_dir=tmp_path / "logs"
    ) as cluster:
        endpoints = cluster.endpoints
        load = PutLoad(endpoints, log, key_stream(rng, log, 0), 0)
        load.run_until(time.monotonic() + 3.0)
        for node in cluster.nodes:
            os.kill(node.pid, signal.SIGKILL)
        for node in cluster.nodes:
            node.process.wait(timeout=10)  # type: ignore[union-attr]
        load.collect_late()
        assert len(log.acknowledged) > 200, "too few writes to prove anything"
        for node in cluster.nodes:
            node.launch()
        for node in cluster.nodes:
            node.wait_ready(timeout=60)
        cluster.wait_converged(timeout=60)
        check_readback(endpoints[0], log, 1)


@pytest.mark.timeout(120)
def test_a_full_disk_fails_writes_with_internal_and_the_node_keeps_serving(
    tmp_path: Path,
) -> None:
    """The node's files may not grow past 2 MiB (RLIMIT_FSIZE, as a full disk would):
    writes past that fail `internal` with a log line naming the failure, stored data
    stays readable, and writes succeed again once there is room."""
    limit = 2 * 1024 * 1024
    endpoint = f"tcp://127.0.0.1:{free_port_block(1)}"
    log_path = tmp_path / "node.log"

    def small_disk() -> None:  # in the child: a soft limit the test can lift later
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    command = [
        sys.executable, "-m", "kvactors", "node", "--name", "full", "--bind", endpoint,
        "--storage", "lmdb", "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        # Safe here: the child only calls setrlimit before exec, taking no lock.
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=log,
            preexec_fn=small_disk,  # noqa: PLW1509
        )
    try:
        NodeProcess("full", endpoint, process=process).wait_ready(timeout=60)
        big = b"x" * 60_000
        stored: list[str] = []
        with Client(endpoint, timeout=10.0, retries=0) as client:
            failure = None
            for number in range(limit // len(big) * 4):
                try:
                    client.put(f"big-{number}", big)
                except InternalError as error:
                    failure = error
                    break
                stored.append(f"big-{number}")
            assert failure is not None, "the file limit was never reached"
            # The message says what failed, where, and LMDB's reason.
            assert str(tmp_path / "data") in str(failure) and "mdb_txn_commit" in str(failure)
            assert stored, "no write fitted before the limit"
            assert process.poll() is None, "the node died"
            assert client.get(stored[0]) == big
            assert client.get_many(stored) == dict.fromkeys(stored, big)
            assert "failed: mdb_txn_commit" in log_path.read_text(errors="replace")

            resource.prlimit(
                process.pid,
                resource.RLIMIT_FSIZE,
                (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
            )
            client.put("after-room", "written")
            assert client.get("after-room") == "written"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.timeout(120)
def test_a_data_directory_of_another_cluster_or_node_is_refused(tmp_path: Path) -> None:
    """`kvactors node` exits with status 2 and says why, before serving anything."""
    data = str(tmp_path / "data")
    endpoint = f"tcp://127.0.0.1:{free_port_block(1)}"
    first = NodeProcess(
        "owner", endpoint, ["--storage", "lmdb", "--data-dir", data, "--cluster", "one"]
    )
    first.start(timeout=60)
    assert first.stop() == 0

    def refused(name: str, cluster: str) -> str:
        command = [
            sys.executable, "-m", "kvactors", "node", "--name", name, "--bind", endpoint,
            "--storage", "lmdb", "--data-dir", data, "--cluster", cluster,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2, done.stderr
        return done.stderr

    assert f"data directory {data} belongs to cluster 'one', not 'two'" in refused("owner", "two")
    assert f"the data directory {data} belongs to node 'owner', not 'thief'" in refused(
        "thief", "one"
    )
    # The owner itself still starts on it, at a higher incarnation.
    again = NodeProcess(
        "owner", endpoint, ["--storage", "lmdb", "--data-dir", data, "--cluster", "one"]
    )
    again.start(timeout=60)
    try:
        with Client(endpoint, timeout=5.0) as client:
            (me,) = client.status()["members"]
            assert me["incarnation"] == 1
    finally:
        again.stop()
