"""Secure local clusters: `LocalCluster(keys_dir=...)` and `kvactors cluster --secure`.

The launcher makes the keys, starts every node with them, and checks readiness and
convergence through its admin client, since a secure node answers no keyless ping.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from kvactors.errors import ConfigError, ForbiddenError, RequestTimeoutError
from kvactors.launcher import ClusterKeys, LocalCluster, free_port_block, node_answers
from kvactors.net.certs import Role, TrustSet, load_certificate

PATIENCE = 60.0


def test_cluster_keys_are_made_once_and_reused(tmp_path: Path) -> None:
    keys = ClusterKeys.create(tmp_path, ["node-1", "node-2"], {"admin": "admin", "ro": "read"})
    trusted = {(cert.name, cert.role) for cert in TrustSet.load(keys.trust_dir)}
    assert trusted == {
        ("node-1", Role.NODE),
        ("node-2", Role.NODE),
        ("admin", Role.ADMIN),
        ("ro", Role.READ),
    }
    first = load_certificate(keys.secret_key("node-1")).public_key
    again = ClusterKeys.create(tmp_path, ["node-1", "node-2"], {"admin": "admin", "ro": "read"})
    assert load_certificate(again.secret_key("node-1")).public_key == first
    with pytest.raises(ConfigError, match="has role read, not write"):
        ClusterKeys.create(tmp_path, ["node-1"], {"admin": "admin", "ro": "write"})


def test_a_secure_cluster_needs_an_admin_client(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'admin' with role admin"):
        LocalCluster(1, base_port=free_port_block(1), keys_dir=tmp_path, clients={"ro": "read"})


def test_a_secure_local_cluster_starts_converges_and_checks_roles(tmp_path: Path) -> None:
    cluster = LocalCluster(
        3,
        base_port=free_port_block(3),
        keys_dir=tmp_path / "keys",
        log_dir=tmp_path / "logs",
        clients={"admin": "admin", "reader": "read"},
    )
    with cluster:
        assert cluster.keys is not None
        with cluster.client() as admin:
            admin.put("greeting", "hello", w=3)
            assert admin.status()["secure"] is True
        with cluster.keys.client(cluster.endpoints[2], "reader", retries=0) as reader:
            assert reader.get("greeting", r=3) == "hello"
            with pytest.raises(ForbiddenError):
                reader.put("greeting", "overwritten")
        # Secure nodes answer no keyless ping, and no client without keys.
        assert not any(node_answers(endpoint) for endpoint in cluster.endpoints)
    assert not any(node.running for node in cluster.nodes)


def _lines_of(stream: IO[str]) -> queue.Queue[str | None]:
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_the_cluster_command_runs_secure_and_says_how_to_connect(tmp_path: Path) -> None:
    base = free_port_block(2)
    keys_dir = tmp_path / "keys"
    command = [sys.executable, "-m", "kvactors", "cluster", "--nodes", "2"]
    command += ["--base-port", str(base), "--secure", "--keys-dir", str(keys_dir)]
    stderr_path = tmp_path / "cluster.stderr"
    with stderr_path.open("w") as stderr:
        launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            assert launcher.stdout is not None
            lines = _lines_of(launcher.stdout)
            printed: list[str] = []
            deadline = time.monotonic() + PATIENCE
            while (line := lines.get(timeout=max(0.0, deadline - time.monotonic()))) != (
                "2 nodes running; Ctrl-C stops them all"
            ):
                assert line is not None, f"ended early: {stderr_path.read_text()}"
                printed.append(line)
            admin_key = keys_dir / "secrets" / "admin.key_secret"
            assert f"  admin client key: {admin_key}" in printed
            suggested = next(line for line in printed if "kvactors status -e" in line)
            # The suggested command line works as printed.
            argv = shlex.split(suggested)
            assert argv[0] == "kvactors"
            status = subprocess.run(
                [sys.executable, "-m", "kvactors", *argv[1:]],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert status.returncode == 0, status.stderr
            assert "node-1" in status.stdout and "node-2" in status.stdout
            # And without keys the nodes say nothing.
            keyless = [sys.executable, "-m", "kvactors", "ping", "-e", f"tcp://127.0.0.1:{base}"]
            refused = subprocess.run(
                [*keyless, "--timeout", "1"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env={k: v for k, v in os.environ.items() if not k.startswith("KVACTORS_")},
            )
            assert refused.returncode == 1 and "timeout" in refused.stderr, refused.stderr
            launcher.send_signal(signal.SIGINT)
            assert launcher.wait(timeout=PATIENCE) == 0
        finally:
            if launcher.poll() is None:
                launcher.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    launcher.wait(timeout=PATIENCE)


def test_a_keyless_client_gets_no_answer_from_a_secure_local_cluster(tmp_path: Path) -> None:
    from kvactors import Client  # noqa: PLC0415

    with LocalCluster(1, base_port=free_port_block(1), keys_dir=tmp_path) as cluster:
        with (
            Client(cluster.endpoints[0], timeout=0.5, retries=0) as keyless,
            pytest.raises(RequestTimeoutError),
        ):
            keyless.ping()
        with cluster.client() as admin:
            admin.ping()
