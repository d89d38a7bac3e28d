"""Protected mode, and the security settings of NodeConfig and Client."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvactors import Client
from kvactors.config import NodeConfig, is_loopback
from kvactors.errors import ConfigError
from kvactors.net.certs import write_key_pair
from kvactors.system import ActorSystem


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://127.0.0.1:5555",
        "tcp://127.9.8.7:1",
        "tcp://localhost:5555",
        "tcp://LOCALHOST:5555",
        "tcp://[::1]:5555",
        "ipc:///tmp/node",
        "inproc://node",
    ],
)
def test_loopback_endpoints(endpoint: str) -> None:
    assert is_loopback(endpoint)


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://0.0.0.0:5555",
        "tcp://*:5555",
        "tcp://[::]:5555",
        "tcp://10.0.0.7:5555",
        "tcp://128.0.0.1:5555",
        "tcp://eth0:5555",
        "tcp://db.example:5555",
        "udp://127.0.0.1:5555",
    ],
)
def test_endpoints_other_machines_may_reach(endpoint: str) -> None:
    assert not is_loopback(endpoint)


def test_secret_key_and_trust_dir_go_together() -> None:
    with pytest.raises(ConfigError, match="go together"):
        NodeConfig(secret_key="a.key_secret")
    with pytest.raises(ConfigError, match="go together"):
        NodeConfig(trust_dir="trust")
    assert NodeConfig(secret_key="a.key_secret", trust_dir="trust").secure


def test_security_settings_come_from_the_environment() -> None:
    env = {
        "KVACTORS_SECRET_KEY": "/keys/a.key_secret",
        "KVACTORS_TRUST_DIR": "/keys/trust",
        "KVACTORS_INSECURE": "true",
    }
    config = NodeConfig.load(env=env)
    assert (config.secret_key, config.trust_dir, config.insecure) == (
        "/keys/a.key_secret",
        "/keys/trust",
        True,
    )


def test_unprotected_binds_name_every_public_plane() -> None:
    assert NodeConfig(bind="tcp://127.0.0.1:5555").unprotected_binds() == []
    assert NodeConfig(bind="tcp://0.0.0.0:5555").unprotected_binds() == [
        "tcp://0.0.0.0:5555",
        "tcp://0.0.0.0:15555",
    ]
    peer_only = NodeConfig(bind="tcp://127.0.0.1:5555", peer_bind="tcp://10.1.2.3:6000")
    assert peer_only.unprotected_binds() == ["tcp://10.1.2.3:6000"]
    assert NodeConfig(bind="tcp://0.0.0.0:5555", insecure=True).unprotected_binds() == []
    secure = NodeConfig(bind="tcp://0.0.0.0:5555", secret_key="k", trust_dir="t")
    assert secure.unprotected_binds() == []
    assert NodeConfig().unprotected_binds() == []  # embedded: binds nothing


def test_a_keyless_node_refuses_to_bind_a_public_address() -> None:
    system = ActorSystem(bind="tcp://0.0.0.0:0", partitions=16)
    with pytest.raises(ConfigError, match=r"refusing to bind .*--insecure to insist"):
        system.start()
    assert not system.running


def test_a_secure_node_refuses_a_key_that_is_not_its_own(tmp_path: Path) -> None:
    _, secret = write_key_pair(tmp_path, "node-x", "node")
    _, reader = write_key_pair(tmp_path, "reader", "read")
    config = {"bind": "tcp://127.0.0.1:0", "trust_dir": str(tmp_path), "partitions": 16}
    with pytest.raises(ConfigError, match="give --name node-x"):
        ActorSystem(name="node-y", secret_key=str(secret), **config).start()
    with pytest.raises(ConfigError, match="role node"):
        ActorSystem(name="reader", secret_key=str(reader), **config).start()


def test_a_client_takes_both_keys_or_neither(tmp_path: Path) -> None:
    _, secret = write_key_pair(tmp_path, "app", "write")
    with pytest.raises(ConfigError, match="go together"):
        Client("tcp://127.0.0.1:1", secret_key=secret)
    with pytest.raises(ConfigError, match="go together"):
        Client("tcp://127.0.0.1:1", trust_dir=tmp_path)
    public = tmp_path / "app.key"
    with pytest.raises(ConfigError, match="public certificate"):
        Client("tcp://127.0.0.1:1", secret_key=public, trust_dir=tmp_path)
