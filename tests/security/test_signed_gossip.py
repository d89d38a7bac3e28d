"""Signed gossip between secure nodes (issue 16, attack 4): a node whose key the cluster
trusts still cannot change another member's record. Two in-process secure nodes on
loopback ports, and a forger holding a third trusted node key, who reaches the peer
plane as any node may and sends gossip no member signed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from kvactors import ActorSystem
from kvactors.cluster.signatures import CertificateSigner
from kvactors.core.gossip import GossipState, Sync
from kvactors.core.member_signatures import claim_payload
from kvactors.core.membership import ClaimSignature, Member, MemberStatus
from kvactors.net.certs import load_certificate, write_key_pair
from kvactors.net.rpc import GOSSIP, MARKER, decode_reply, encode_call
from kvactors.net.zap import secure_client
from kvactors.testing import wait_until

PATIENCE = 20.0  # far above what any step takes: a busy machine is slower, not wrong
GOSSIP_LOGGER = "kvactors.cluster.gossip_protocol"


@dataclass(frozen=True)
class Keys:
    trust: Path
    secrets: Path

    def secret(self, name: str) -> Path:
        return self.secrets / f"{name}.key_secret"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    keys = Keys(tmp_path / "trust", tmp_path / "secrets")
    keys.trust.mkdir()
    for name in ("a", "b", "forger"):
        public, _ = write_key_pair(keys.secrets, name, "node")
        (keys.trust / public.name).write_bytes(public.read_bytes())
    return keys


@pytest.fixture
def pair(keys: Keys) -> Iterator[tuple[ActorSystem, ActorSystem]]:
    """Secure nodes a and b, joined, each owning a share of the ring."""

    def node(name: str, *seeds: str) -> ActorSystem:
        return ActorSystem(
            name=name,
            bind="tcp://127.0.0.1:0",
            seeds=seeds,
            secret_key=str(keys.secret(name)),
            trust_dir=str(keys.trust),
            partitions=64,
        ).start()

    with contextlib.ExitStack() as stack:
        a = node("a")
        stack.callback(a.stop)
        b = node("b", str(a.endpoint))
        stack.callback(b.stop)
        for system in (a, b):
            wait_until(lambda system=system: set(system.ring_owners()) == {"a", "b"}, PATIENCE)
        yield a, b


def gossip_state(system: ActorSystem) -> GossipState:
    state = system._services.gossip_state
    assert state is not None
    return state


def send_as_forger(keys: Keys, system: ActorSystem, message: dict[str, Any]) -> dict[str, Any]:
    """One `gossip` RPC to `system`'s peer plane over CURVE with the forger's node key."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        server_key = load_certificate(keys.trust / f"{system.name}.key").public_key
        secure_client(sock, load_certificate(keys.secret("forger")), server_key)
        assert system.peer_endpoint is not None
        sock.connect(system.peer_endpoint)
        sock.send_multipart([MARKER, encode_call(1, GOSSIP, 5.0, {"message": message})])
        assert sock.poll(int(PATIENCE * 1000)), "the node did not answer a gossip call"
        return decode_reply(sock.recv_multipart()[-1])
    finally:
        sock.close()


def test_secure_nodes_gossip_signed_records_only(pair: tuple[ActorSystem, ActorSystem]) -> None:
    for system in pair:
        state = gossip_state(system)
        assert all(record.signature is not None for record in state.table.values())
        assert state.forged_records == 0


def test_a_trusted_node_key_cannot_sign_for_another_member(
    keys: Keys, pair: tuple[ActorSystem, ActorSystem], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    caplog.set_level(logging.WARNING, logger=GOSSIP_LOGGER)
    held = gossip_state(a).table["b"]
    # b moved to the forger's socket, one incarnation on: signed by the forger's own
    # (trusted) key, and once unsigned as an insecure cluster would take it.
    moved = dataclasses.replace(
        held, endpoint="tcp://127.0.0.1:9", incarnation=held.incarnation + 1, signature=None
    )
    payload = claim_payload(
        "b", moved.endpoint, moved.client_endpoint, moved.incarnation, MemberStatus.ALIVE
    )
    forger = CertificateSigner(load_certificate(keys.secret("forger")))
    signed_by_forger = dataclasses.replace(
        moved, signature=ClaimSignature(MemberStatus.ALIVE, forger.sign(payload))
    )
    left = dataclasses.replace(held, status=MemberStatus.LEFT, incarnation=held.incarnation + 1)
    for record in (signed_by_forger, moved, left):
        sync = Sync("forger", "tcp://127.0.0.1:9", (record,))
        assert send_as_forger(keys, a, sync.to_wire())["ok"]
    wait_until(lambda: gossip_state(a).forged_records == 3, PATIENCE)
    logged = [
        r.getMessage()
        for r in caplog.records
        if r.name == GOSSIP_LOGGER and re.search(r"records refused \(unsigned", r.getMessage())
    ]
    assert logged == [
        "gossip from forger: 1 records refused (unsigned, wrongly signed, or signed by a "
        "node not trusted)"
    ]
    now_held: Member = gossip_state(a).table["b"]
    assert now_held.endpoint == held.endpoint
    assert now_held.status is MemberStatus.ALIVE
    # b is where it was and still a member: a write through a is read through b.
    a.client.put("after-forgery", 1)
    assert b.client.get("after-forgery") == 1
    assert set(a.ring_owners()) == {"a", "b"}
