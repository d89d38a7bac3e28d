"""Real node processes for integration tests: `kvactors node` on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kvactors import ActorSystem, NodeConfig
from kvactors.launcher import node_answers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NodeProcess:
    """A `kvactors node` child process; its log lines go to `log_path`."""

    name: str
    endpoint: str
    log_path: Path
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    peer_endpoint: str = field(default_factory=lambda: f"tcp://127.0.0.1:{free_port()}")

    def start(self, timeout: float = 30.0) -> NodeProcess:
        command = [
            sys.executable, "-m", "kvactors", "node",
            "--name", self.name, "--bind", self.endpoint,
            "--peer-bind", self.peer_endpoint, *self.args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not node_answers(self.endpoint):
            if self.process.poll() is not None:
                raise RuntimeError(f"node {self.name} exited:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} did not answer within {timeout}s")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, number: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, number)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[object]:
    """A factory: `start_node(name, *extra_args)` starts a node process and returns it."""
    nodes: list[NodeProcess] = []

    def start(name: str = "node-a", *args: str) -> NodeProcess:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        node = NodeProcess(name, endpoint, tmp_path / f"{name}.log", list(args))
        nodes.append(node)
        return node.start()

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def node(start_node: object) -> NodeProcess:
    """One running node process."""
    return start_node()  # type: ignore[operator, no-any-return]


@pytest.fixture
def local_node() -> Iterator[ActorSystem]:
    """Node "a", in this process, with a real transport on a free loopback port."""
    system = ActorSystem(NodeConfig(name="a", bind="tcp://127.0.0.1:0")).start()
    try:
        yield system
    finally:
        system.stop()
