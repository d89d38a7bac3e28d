"""LocalCluster: node processes on this machine, for `kvactors cluster`, demos and tests.

Each node is a real `kvactors node` process bound to loopback; the first founds the
cluster and the others join through it. The launcher waits until every node answers
before it returns, and stops them all (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import msgpack
import zmq

from kvactors.errors import KVActorsError

__all__ = ["LocalCluster", "NodeProcess", "free_port_block", "node_answers"]

# Below Linux's ephemeral range (32768 and up), so outgoing connections do not take them.
_PORT_RANGE = (20_000, 30_000)


def free_port_block(count: int, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """The first of `count` consecutive ports free on `host` now, chosen at random."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(_PORT_RANGE[0], _PORT_RANGE[1] - count)
        if all(_port_is_free(host, base + offset) for offset in range(count)):
            return base
    raise KVActorsError(f"found no {count} free consecutive ports in {_PORT_RANGE}")


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def node_answers(endpoint: str, timeout: float = 0.5) -> bool:
    """True if a node answers a ping on `endpoint` within `timeout` seconds."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb({"op": "ping"}))
        return bool(sock.poll(int(timeout * 1000)))
    finally:
        sock.close()


@dataclass
class NodeProcess:
    """One `kvactors node` process."""

    name: str
    endpoint: str
    args: list[str] = field(default_factory=list)
    log: IO[bytes] | None = None
    process: subprocess.Popen[bytes] | None = None
    peer_endpoint: str | None = None
    """Its peer plane's endpoint; by default a port free when this is made, on the
    client endpoint's host, kept across restarts of the process."""

    def __post_init__(self) -> None:
        if self.peer_endpoint is None:
            host = self.endpoint.removeprefix("tcp://").rpartition(":")[0]
            self.peer_endpoint = f"tcp://{host}:{free_port_block(1, host.strip('[]'))}"

    def start(self, timeout: float = 30.0) -> Self:
        """Launch the process and wait until the node answers."""
        return self.launch().wait_ready(timeout)

    def launch(self) -> Self:
        """Launch the process; it answers a little later (see `wait_ready`)."""
        command = [
            sys.executable, "-m", "kvactors", "node",
            "--name", self.name, "--bind", self.endpoint,
            "--peer-bind", str(self.peer_endpoint), *self.args,
        ]  # fmt: skip
        target = self.log if self.log is not None else subprocess.DEVNULL
        # A session of its own: a terminal's Ctrl-C reaches the launcher alone, which then
        # stops every node once, cleanly.
        self.process = subprocess.Popen(
            command, stdout=target, stderr=target, start_new_session=True
        )
        return self

    def wait_ready(self, timeout: float = 30.0) -> Self:
        """Wait until the launched node answers a ping."""
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while not node_answers(self.endpoint):
            if self.process.poll() is not None:
                raise KVActorsError(f"node {self.name} exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise KVActorsError(f"node {self.name} did not answer within {timeout}s")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node dies at once, as in a crash."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        return self.process.returncode


def _storage_args(data_dir: str | Path | None, name: str) -> list[str]:
    if data_dir is None:
        return []
    return ["--storage", "lmdb", "--data-dir", str(Path(data_dir) / name)]


def _peer_ports(nodes: int, host: str) -> int:
    """The first of `nodes` free consecutive ports for peer planes on `host`."""
    return free_port_block(nodes, host.strip("[]"))


class LocalCluster:
    """`nodes` node processes on `host`, ports `base_port` upwards. A context manager."""

    def __init__(
        self,
        nodes: int,
        *,
        base_port: int,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        log_dir: str | Path | None = None,
        data_dir: str | Path | None = None,
        converge: bool = True,
        peer_base_port: int | None = None,
    ) -> None:
        """`converge`: `start()` returns only once every node sees every node alive.
        `peer_base_port`: the first of the nodes' peer ports (default: free ones).
        `data_dir`: every node keeps its data durably (lmdb) in a directory of its own
        there, named after the node, so that a node restarted keeps what it had."""
        if nodes < 1:
            raise KVActorsError("a cluster needs at least one node")
        self._log_dir = None if log_dir is None else Path(log_dir)
        self._converge = converge
        self._logs: list[IO[bytes]] = []
        first = f"tcp://{host}:{base_port}"
        # Peer planes on a block of their own: the default (client port + 1) would be
        # the next node's client port.
        peer_base = peer_base_port if peer_base_port is not None else _peer_ports(nodes, host)
        self.nodes = [
            NodeProcess(
                f"node-{index + 1}",
                f"tcp://{host}:{base_port + index}",
                [
                    *extra_args,
                    *_storage_args(data_dir, f"node-{index + 1}"),
                    *(["--join", first] if index else []),
                ],
                peer_endpoint=f"tcp://{host}:{peer_base + index}",
            )
            for index in range(nodes)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [node.endpoint for node in self.nodes]

    def start(self) -> Self:
        try:
            # All at once: each process takes about a second to import and start, and the
            # joiners keep knocking at the first node until it answers.
            for node in self.nodes:
                if self._log_dir is not None:
                    self._log_dir.mkdir(parents=True, exist_ok=True)
                    log = (self._log_dir / f"{node.name}.log").open("ab")
                    self._logs.append(log)
                    node.log = log
                node.launch()
            for node in self.nodes:
                node.wait_ready()
            if self._converge:
                self.wait_converged()
        except BaseException:
            self.stop()
            raise
        return self

    def exited(self) -> list[str]:
        """Names of the nodes whose process has ended."""
        return [node.name for node in self.nodes if node.process and not node.running]

    def failed(self) -> list[str]:
        """Names of the nodes whose process has ended with an error (leaving exits 0)."""
        return [
            node.name
            for node in self.nodes
            if node.process is not None and node.process.poll() not in (None, 0)
        ]

    def wait_converged(self, timeout: float = 30.0) -> None:
        """Wait until every node lists every node as alive: until then a joiner that is
        still alone thinks it owns every key."""
        from kvactors.client.client import Client  # noqa: PLC0415 - the launcher needs it here only

        names = {node.name for node in self.nodes}
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            with Client(node.endpoint, timeout=2.0, retries=0) as client:
                while True:
                    alive = {
                        m["name"] for m in client.status()["members"] if m["status"] == "alive"
                    }
                    if names <= alive:
                        break
                    if time.monotonic() > deadline:
                        raise KVActorsError(f"{node.name} sees only {sorted(alive)} alive")
                    time.sleep(0.05)

    def node(self, name: str) -> NodeProcess:
        return next(node for node in self.nodes if node.name == name)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
