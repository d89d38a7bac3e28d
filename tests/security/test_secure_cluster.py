"""A secure cluster (CURVE keys, a trust dir, roles), attacked as an outsider would.

Three `kvactors node` processes on 127.0.0.1 with --secret-key and --trust-dir. Clients
hold keys of role read, write and admin; a stranger holds a key nobody trusts; a rogue
node holds a node key the cluster does not trust. The tests run in file order: the last
one kills a node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import zmq

from kvactors import Client
from kvactors.errors import ForbiddenError, RequestTimeoutError
from kvactors.launcher import NodeProcess, free_port_block
from kvactors.net.certs import Certificate, load_certificate, write_key_pair
from kvactors.net.rpc import MARKER, encode_call
from kvactors.net.zap import secure_client
from kvactors.system import ActorSystem
from kvactors.testing import wait_until

NODES = ("node-a", "node-b", "node-c")
CLIENTS = {"reader": "read", "writer": "write", "admin": "admin", "doomed": "write"}
SILENCE_MS = 1_000  # how long an unanswered request is waited for


@dataclass(frozen=True)
class Keys:
    trust: Path
    secrets: Path
    outsiders: Path  # keys nobody trusts

    def secret(self, name: str) -> Path:
        folder = self.outsiders if name in ("stranger", "rogue") else self.secrets
        return folder / f"{name}.key_secret"

    def certificate(self, name: str) -> Certificate:
        return load_certificate(self.secret(name))

    def client(self, name: str, endpoint: str | list[str], timeout: float = 5.0) -> Client:
        return Client(
            endpoint, timeout=timeout, retries=0, secret_key=self.secret(name), trust_dir=self.trust
        )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("keys")
    keys = Keys(root / "trust", root / "secrets", root / "outsiders")
    keys.trust.mkdir()
    for name, role in [*((node, "node") for node in NODES), *CLIENTS.items()]:
        public, _ = write_key_pair(keys.secrets, name, role)
        (keys.trust / public.name).write_bytes(public.read_bytes())
    write_key_pair(keys.outsiders, "stranger", "admin")
    write_key_pair(keys.outsiders, "rogue", "node")
    return keys


@pytest.fixture(scope="module")
def cluster(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    logs = tmp_path_factory.mktemp("secure-cluster")
    base = free_port_block(len(NODES))
    first = f"tcp://127.0.0.1:{base}"
    nodes = []
    for index, name in enumerate(NODES):
        args = ["--secret-key", str(keys.secret(name)), "--trust-dir", str(keys.trust)]
        args += ["--join", first] if index else []
        log = (logs / f"{name}.log").open("ab")
        nodes.append(NodeProcess(name, f"tcp://127.0.0.1:{base + index}", args, log=log))
    try:
        for node in nodes:
            node.launch()
        with keys.client("admin", [node.endpoint for node in nodes]) as admin:
            for node in nodes:
                wait_until(lambda n=node: sees_all_alive(keys, n), timeout=30)
            admin.ping()
        yield nodes
    finally:
        for node in nodes:
            node.stop()
            assert node.log is not None
            node.log.close()


def sees_all_alive(keys: Keys, node: NodeProcess) -> bool:
    assert node.running, f"{node.name} exited"
    try:
        with keys.client("reader", node.endpoint, timeout=1.0) as reader:
            members = reader.status()["members"]
    except RequestTimeoutError:
        return False
    return {m["name"] for m in members if m["status"] == "alive"} >= set(NODES)


def log_of(node: NodeProcess) -> str:
    assert node.log is not None
    node.log.flush()
    return Path(node.log.name).read_text(errors="replace")


@contextlib.contextmanager
def curve_dealer(keys: Keys, name: str, server: str, endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    """A raw DEALER holding `name`'s key, pinned to node `server`'s key."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure_client(sock, keys.certificate(name), keys.certificate(server).public_key)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close()


def test_writes_replicate_across_a_secure_cluster(keys: Keys, cluster: list[NodeProcess]) -> None:
    a, b, _ = cluster
    with keys.client("writer", a.endpoint) as writer:
        writer.put("greeting", "hello", w=2)
    with keys.client("reader", b.endpoint) as reader:
        assert reader.get("greeting", r=2) == "hello"
        assert reader.status()["secure"] is True


def test_roles_decide_what_a_key_may_do(keys: Keys, cluster: list[NodeProcess]) -> None:
    a = cluster[0]
    with keys.client("reader", a.endpoint) as reader:
        with pytest.raises(ForbiddenError, match="role read, which may not put"):
            reader.put("greeting", "overwritten")
        with pytest.raises(ForbiddenError):
            reader.delete("greeting")
        assert reader.get("greeting") == "hello"
        reader.ping()
    with keys.client("writer", a.endpoint) as writer:
        with pytest.raises(ForbiddenError, match="role write, which may not leave"):
            writer.leave()
        writer.put("written", 1)
        assert writer.get("written") == 1
    assert a.running
    assert sees_all_alive(keys, a)


def test_an_untrusted_client_key_gets_nothing(keys: Keys, cluster: list[NodeProcess]) -> None:
    a = cluster[0]
    with (
        keys.client("stranger", a.endpoint, timeout=1.0) as stranger,
        pytest.raises(RequestTimeoutError, match="no CURVE handshake completed"),
    ):
        stranger.get("greeting")
    # A hand-made socket that knows the node's key: its handshake is refused by ZAP.
    with curve_dealer(keys, "stranger", "node-a", a.endpoint) as sock:
        sock.send(msgpack.packb({"op": "get", "key": "greeting", "id": 1}))
        assert not sock.poll(SILENCE_MS)
    assert "untrusted key" in log_of(a)
    with keys.client("reader", a.endpoint) as reader:
        assert reader.get("greeting") == "hello"


def test_a_client_pins_node_keys_so_an_impersonator_gets_nothing(keys: Keys) -> None:
    """A ROUTER with a key not in the client's trust dir (and no ZAP: it would take any
    client) never completes a handshake with the client, so it receives no request."""
    impostor: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    impostor.setsockopt(zmq.LINGER, 0)
    rogue = keys.certificate("rogue")
    assert rogue.secret_key is not None
    impostor.setsockopt(zmq.CURVE_SERVER, 1)
    impostor.setsockopt(zmq.CURVE_SECRETKEY, rogue.secret_key)
    port = impostor.bind_to_random_port("tcp://127.0.0.1")
    try:
        with (
            keys.client("writer", f"tcp://127.0.0.1:{port}", timeout=1.0) as writer,
            pytest.raises(RequestTimeoutError),
        ):
            writer.put("greeting", "stolen")
        assert not impostor.poll(100)
    finally:
        impostor.close()


def test_a_rogue_node_cannot_join(keys: Keys, cluster: list[NodeProcess]) -> None:
    """A node whose key the cluster does not trust (it trusts the cluster's keys) joins
    through a member's client endpoint: it is refused at the handshake, never becomes a
    member and holds no data."""
    a = cluster[0]
    rogue = ActorSystem(
        name="rogue",
        bind="tcp://127.0.0.1:0",
        seeds=(a.endpoint,),
        secret_key=str(keys.secret("rogue")),
        trust_dir=str(keys.trust),
        partitions=64,
    ).start()
    try:
        rogue_key = keys.certificate("rogue").public_key.decode()
        wait_until(lambda: f"untrusted key {rogue_key}" in log_of(a), timeout=10)
        # Several gossip rounds (0.25 s each) after it knocked: still out, still empty.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            with keys.client("reader", a.endpoint) as reader:
                assert "rogue" not in {m["name"] for m in reader.status()["members"]}
            assert [m.name for m in rogue.members()] == ["rogue"]
            assert rogue.status()["storage"]["keys"] == 0
            time.sleep(0.1)
    finally:
        rogue.stop()


def test_the_client_plane_refuses_node_calls_from_a_node_key(
    keys: Keys, cluster: list[NodeProcess]
) -> None:
    a, b, _ = cluster
    call = encode_call(1, "store", 5.0, {"ops": [["read", b"greeting"]]})
    with curve_dealer(keys, "node-a", "node-b", b.endpoint) as sock:
        sock.send_multipart([MARKER, call])
        assert sock.poll(5_000), "no answer"
        answer = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
    assert answer["ok"] is False and answer["error"]["code"] == "bad_request", answer
    assert b"hello" not in msgpack.packb(answer)
    # And the peer plane admits node keys only: a client key's handshake is refused.
    with keys.client("admin", a.endpoint) as admin:
        peer = admin.status()["peer_endpoint"]
    with curve_dealer(keys, "admin", "node-a", peer) as sock:
        sock.send_multipart([MARKER, call])
        assert not sock.poll(SILENCE_MS)


def test_a_revoked_key_loses_its_open_connection(keys: Keys, cluster: list[NodeProcess]) -> None:
    a = cluster[0]
    with keys.client("doomed", a.endpoint) as doomed:
        doomed.put("doomed", 1)  # the connection is open and served
        (keys.trust / "doomed.key").unlink()
        os.kill(a.pid, signal.SIGHUP)

        def refused() -> bool:
            try:
                assert doomed.get("doomed") == 1
            except ForbiddenError:
                return True
            return False

        # SIGHUP re-reads at once (the timer would take up to 5 s).
        wait_until(refused, timeout=3.0, interval=0.05)
        with pytest.raises(ForbiddenError, match="no longer trusted"):
            doomed.put("doomed", 2)
    with (
        keys.client("doomed", a.endpoint, timeout=1.0) as again,
        pytest.raises(RequestTimeoutError),
    ):
        again.get("doomed")  # a new connection fails its handshake
    with keys.client("reader", a.endpoint) as reader:
        assert reader.get("doomed") == 1


def test_the_client_commands_take_keys_from_flags_or_the_environment(
    keys: Keys, cluster: list[NodeProcess]
) -> None:
    a = cluster[0]
    command = [sys.executable, "-m", "kvactors", "get", "-e", a.endpoint, "greeting"]
    flags = ["--secret-key", str(keys.secret("reader")), "--trust-dir", str(keys.trust)]
    by_flags = subprocess.run(
        [*command, *flags], capture_output=True, text=True, timeout=30, check=False
    )
    assert (by_flags.returncode, by_flags.stdout.strip()) == (0, '"hello"'), by_flags.stderr
    env = {
        **os.environ,
        "KVACTORS_SECRET_KEY": str(keys.secret("reader")),
        "KVACTORS_TRUST_DIR": str(keys.trust),
    }
    put = [sys.executable, "-m", "kvactors", "put", "-e", a.endpoint, "greeting", '"bye"']
    refused = subprocess.run(put, capture_output=True, text=True, timeout=30, check=False, env=env)
    assert refused.returncode == 1
    assert "error (forbidden)" in refused.stderr


def test_a_removed_node_key_loses_its_peer_connection(keys: Keys, tmp_path: Path) -> None:
    """The peer plane checks every call against the live trust set: a node key removed
    from it is refused on the connection it has open (in-process nodes, own trust dirs)."""
    trusts = {name: tmp_path / name for name in ("node-a", "node-b")}
    for trust in trusts.values():
        trust.mkdir()
        for name in trusts:
            (trust / f"{name}.key").write_bytes((keys.trust / f"{name}.key").read_bytes())

    def node(name: str, *seeds: str) -> ActorSystem:
        return ActorSystem(
            name=name,
            bind="tcp://127.0.0.1:0",
            seeds=seeds,
            secret_key=str(keys.secret(name)),
            trust_dir=str(trusts[name]),
            partitions=64,
        ).start()

    a = node("node-a")
    try:
        b = node("node-b", str(a.endpoint))
        try:
            assert a.peer_endpoint is not None
            assert b.rpc(a.peer_endpoint, "ping").result(5) == {"node": "node-a"}
            (trusts["node-a"] / "node-b.key").unlink()
            assert a.reload_trust()
            with pytest.raises(ForbiddenError, match="trusted node keys only"):
                b.rpc(a.peer_endpoint, "ping").result(5)
        finally:
            b.stop()
    finally:
        a.stop()


def run_node(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kvactors", "node", "--name", "p", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def test_protected_mode_refuses_a_keyless_node_on_a_public_address() -> None:
    port = free_port_block(1, "0.0.0.0")
    result = run_node("--bind", f"tcp://0.0.0.0:{port}")
    assert result.returncode == 2, result.stderr
    assert "refusing to bind tcp://0.0.0.0" in result.stderr
    assert "--secret-key" in result.stderr and "--insecure" in result.stderr


def test_insecure_lets_a_keyless_node_bind_a_public_address() -> None:
    port = free_port_block(1, "0.0.0.0")
    node = NodeProcess(
        "p", f"tcp://0.0.0.0:{port}", ["--insecure"], peer_endpoint="tcp://0.0.0.0:0"
    )
    node.launch()
    try:
        deadline = time.monotonic() + 20
        while True:
            with (
                Client(f"tcp://127.0.0.1:{port}", timeout=0.5, retries=0) as client,
                contextlib.suppress(RequestTimeoutError),
            ):
                client.ping()
                break
            assert node.running, "the node exited"
            assert time.monotonic() < deadline, "the node did not answer"
    finally:
        assert node.stop() == 0


def test_reads_survive_a_killed_node(keys: Keys, cluster: list[NodeProcess]) -> None:
    """Last: kills a node."""
    a, b, c = cluster
    c.kill()
    with keys.client("reader", a.endpoint) as reader:
        assert reader.get("greeting", r=2) == "hello"
    with keys.client("writer", b.endpoint) as writer:
        writer.put("after", "the crash", w=2)
    with keys.client("reader", a.endpoint) as reader:
        assert reader.get("after", r=2) == "the crash"
