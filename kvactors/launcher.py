"""LocalCluster: node processes on this machine, for `kvactors cluster`, demos and tests.

Each node is a real `kvactors node` process bound to loopback; the first founds the
cluster and the others join through it. The launcher waits until every node answers
before it returns, and stops them all (SIGTERM, then SIGKILL after a grace period).

A secure cluster (`LocalCluster(..., keys_dir=DIR)`) gets its keys made by the launcher
(`ClusterKeys`): a node key pair per node and client key pairs (an `admin` one at
least), the public certificates gathered in a trust dir. Every node runs with
`--secret-key` and `--trust-dir`, and the launcher checks readiness and convergence
through a client holding the admin key, since a secure node answers no keyless ping.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Final, Self

import msgpack
import zmq

from kvactors.errors import ConfigError, KVActorsError
from kvactors.net.certs import (
    PUBLIC_SUFFIX,
    SECRET_SUFFIX,
    Role,
    load_certificate,
    write_key_pair,
)

if TYPE_CHECKING:
    from kvactors.client.client import Client

__all__ = [
    "ADMIN_CLIENT",
    "ClusterKeys",
    "LocalCluster",
    "NodeProcess",
    "free_port_block",
    "node_answers",
    "secure_node_answers",
]

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


def secure_node_answers(
    endpoint: str, secret_key: str | Path, trust_dir: str | Path, timeout: float = 0.5
) -> bool:
    """True if a secure node answers a ping on `endpoint` within `timeout` seconds, to a
    client holding `secret_key` and trusting the node keys in `trust_dir`."""
    from kvactors.client.client import Client  # noqa: PLC0415 - the launcher needs it here only
    from kvactors.errors import RequestTimeoutError  # noqa: PLC0415

    try:
        with Client(
            endpoint, timeout=timeout, retries=0, secret_key=secret_key, trust_dir=trust_dir
        ) as client:
            client.ping()
    except RequestTimeoutError:
        return False
    return True


ADMIN_CLIENT: Final = "admin"


@dataclass(frozen=True)
class ClusterKeys:
    """The keys of a secure local cluster, kept under `directory`:

        DIR/secrets/NAME.key, NAME.key_secret   every node's and client's key pair
        DIR/trust/NAME.key                      their public certificates: the trust dir

    The nodes and the clients all use DIR/trust (a client uses only its node keys)."""

    directory: Path

    @property
    def secrets(self) -> Path:
        return self.directory / "secrets"

    @property
    def trust_dir(self) -> Path:
        return self.directory / "trust"

    @classmethod
    def create(
        cls,
        directory: str | Path,
        nodes: Sequence[str],
        clients: Mapping[str, Role | str] | None = None,
    ) -> ClusterKeys:
        """Keys for `nodes` (role node) and `clients` (name: role; by default one
        `admin` client), made where missing and reused where present (so a cluster
        started again on the same directory keeps its keys); ConfigError if a key
        present has another role than asked."""
        keys = cls(Path(directory))
        wanted = {**{name: Role.NODE for name in nodes}, **(clients or {ADMIN_CLIENT: Role.ADMIN})}
        keys.trust_dir.mkdir(parents=True, exist_ok=True)
        for name, role in wanted.items():
            keys.ensure(name, role)
        return keys

    def ensure(self, name: str, role: Role | str) -> Path:
        """`name`'s secret key, made (with role `role`) if missing, its public
        certificate in the trust dir. Nodes re-read the trust dir every few seconds (at
        once on SIGHUP), so a key added while they run is accepted shortly after."""
        public = self.secrets / f"{name}{PUBLIC_SUFFIX}"
        secret = self.secret_key(name)
        if secret.exists():
            found = load_certificate(secret).role
            if found != Role(role):
                raise ConfigError(f"{secret} has role {found.value}, not {Role(role).value}")
        else:
            write_key_pair(self.secrets, name, role)
        trusted = self.trust_dir / public.name
        if not trusted.exists():
            trusted.write_bytes(public.read_bytes())
        return secret

    def secret_key(self, name: str) -> Path:
        """The secret certificate of node or client `name`."""
        return self.secrets / f"{name}{SECRET_SUFFIX}"

    def node_args(self, name: str) -> list[str]:
        """The flags that make node `name` run secure."""
        return ["--secret-key", str(self.secret_key(name)), "--trust-dir", str(self.trust_dir)]

    def client(
        self,
        endpoints: str | Sequence[str],
        name: str = ADMIN_CLIENT,
        *,
        timeout: float = 5.0,
        retries: int = 2,
    ) -> Client:
        """A Client holding client `name`'s key."""
        from kvactors.client.client import Client  # noqa: PLC0415

        return Client(
            endpoints,
            timeout=timeout,
            retries=retries,
            secret_key=self.secret_key(name),
            trust_dir=self.trust_dir,
        )

    def answers(self, endpoint: str, timeout: float = 0.5) -> bool:
        """True if the node at `endpoint` answers the admin client's ping in time."""
        return secure_node_answers(endpoint, self.secret_key(ADMIN_CLIENT), self.trust_dir, timeout)


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
    keys: ClusterKeys | None = None
    """Run secure: with this node's key (named after it) and the keys' trust dir, and
    checked for readiness through the keys' admin client."""

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
            *(self.keys.node_args(self.name) if self.keys is not None else []),
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
        while not self.answers():
            if self.process.poll() is not None:
                raise KVActorsError(f"node {self.name} exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise KVActorsError(f"node {self.name} did not answer within {timeout}s")
        return self

    def answers(self, timeout: float = 0.5) -> bool:
        """True if the node answers a ping within `timeout` seconds (secure: to the
        admin client of its keys)."""
        if self.keys is not None:
            return self.keys.answers(self.endpoint, timeout)
        return node_answers(self.endpoint, timeout)

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
        keys_dir: str | Path | None = None,
        clients: Mapping[str, Role | str] | None = None,
    ) -> None:
        """`converge`: `start()` returns only once every node sees every node alive.
        `peer_base_port`: the first of the nodes' peer ports (default: free ones).
        `data_dir`: every node keeps its data durably (lmdb) in a directory of its own
        there, named after the node, so that a node restarted keeps what it had.
        `keys_dir`: run secure, with keys made (or reused) there (`ClusterKeys`): one
        per node and one per client of `clients` (name: role; by default one `admin`,
        which must stay among them: the launcher checks the nodes through it)."""
        if nodes < 1:
            raise KVActorsError("a cluster needs at least one node")
        names = [f"node-{index + 1}" for index in range(nodes)]
        if clients is not None and Role(clients.get(ADMIN_CLIENT, Role.READ)) is not Role.ADMIN:
            raise ConfigError(f"a secure cluster's clients need {ADMIN_CLIENT!r} with role admin")
        self.keys = None if keys_dir is None else ClusterKeys.create(keys_dir, names, clients)
        """The secure cluster's keys (None when insecure): `keys.client(endpoints, NAME)`."""
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
                keys=self.keys,
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
        names = {node.name for node in self.nodes}
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            with self.client(node.endpoint, timeout=2.0, retries=0) as client:
                while True:
                    alive = {
                        m["name"] for m in client.status()["members"] if m["status"] == "alive"
                    }
                    if names <= alive:
                        break
                    if time.monotonic() > deadline:
                        raise KVActorsError(f"{node.name} sees only {sorted(alive)} alive")
                    time.sleep(0.05)

    def client(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 2,
    ) -> Client:
        """A Client of this cluster (every node's endpoint by default); secure: holding
        the admin key (`keys.client` for another client's key)."""
        from kvactors.client.client import Client  # noqa: PLC0415 - the launcher needs it here only

        where = self.endpoints if endpoints is None else endpoints
        if self.keys is not None:
            return self.keys.client(where, timeout=timeout, retries=retries)
        return Client(where, timeout=timeout, retries=retries)

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
