"""Forged gossip against real nodes (issue 16, attacks 4 and 11): nodes of this process on
loopback ports, and a plain DEALER socket sending them `gossip` RPCs no member sent.

Each attack must fail as kvactors.core.gossip describes, and the nodes keep serving: a
45,000-member message is refused whole, a live node "left" at incarnation 2**63 - 1 or
moved to the attacker's socket stays where it is, a name with a control character never
reaches a table or a log line, and a forged member that died is taken out by `remove`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from kvactors import ActorSystem, Client, NodeConfig
from kvactors.core.gossip import GOSSIP_FORMAT, MAX_GOSSIP_RECORDS
from kvactors.core.membership import (
    MAX_COUNTER,
    Member,
    MemberStatus,
    Remove,
    RemoveOutcome,
    RemoveResult,
)
from kvactors.errors import BadRequestError, UnavailableError
from kvactors.net.rpc import GOSSIP, MARKER, decode_reply, encode_call
from kvactors.testing import stored_values, wait_until

PATIENCE = 20.0  # far above what any step takes: a busy machine is slower, not wrong
GOSSIP_LOGGER = "kvactors.cluster.gossip_protocol"
MEMBERSHIP_LOGGER = "kvactors.cluster.membership_manager"
ALIVE, LEFT = MemberStatus.ALIVE, MemberStatus.LEFT


def peer_endpoint(system: ActorSystem) -> str:
    """Where other nodes (and so a forger) send `system` gossip: its peer plane."""
    endpoint = getattr(system, "peer_endpoint", None) or system.endpoint
    assert endpoint is not None
    return str(endpoint)


def send_gossip(system: ActorSystem, message: dict[str, Any]) -> dict[str, Any]:
    """One `gossip` RPC to `system` from a socket of our own; the node's reply."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(peer_endpoint(system))
        sock.send_multipart([MARKER, encode_call(1, GOSSIP, 5.0, {"message": message})])
        assert sock.poll(int(PATIENCE * 1000)), "the node did not answer a gossip call"
        return decode_reply(sock.recv_multipart()[-1])
    finally:
        sock.close()


def forged_sync(*records: list[Any], sender: str = "mallory") -> dict[str, Any]:
    return {
        "format": GOSSIP_FORMAT,
        "type": "sync",
        "sender": sender,
        "endpoint": "tcp://127.0.0.1:9",
        "members": list(records),
    }


def table(system: ActorSystem) -> dict[str, Member]:
    """The node's gossip table, tombstones and all (what the ring and status never see)."""
    state = system._services.gossip_state
    assert state is not None
    return dict(state.table)


def warnings_of(caplog: pytest.LogCaptureFixture, pattern: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == GOSSIP_LOGGER and re.search(pattern, record.getMessage())
    ]


def start(config: NodeConfig) -> ActorSystem:
    return ActorSystem(config).start()


@pytest.fixture
def pair() -> Iterator[tuple[ActorSystem, ActorSystem]]:
    """Nodes a and b, joined, each owning a share of the ring."""
    with contextlib.ExitStack() as stack:
        a = start(NodeConfig(name="a", bind="tcp://127.0.0.1:0"))
        stack.callback(a.stop)
        assert a.endpoint is not None
        b = start(NodeConfig(name="b", bind="tcp://127.0.0.1:0", seeds=(a.endpoint,)))
        stack.callback(b.stop)
        for node in (a, b):
            wait_until(lambda node=node: set(node.ring_owners()) == {"a", "b"}, PATIENCE)
        yield a, b


def test_a_45000_member_message_is_refused_whole_and_logged_once(
    pair: tuple[ActorSystem, ActorSystem], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = pair
    caplog.set_level(logging.INFO)
    forged = forged_sync(*([f"f{i:05d}", "tcp://10.9.9.9:1", "alive", 0, 0] for i in range(45_000)))
    for _ in range(3):
        assert send_gossip(a, forged)["ok"]
    refused = (
        "refusing gossip from mallory: a gossip message lists 45000 members; "
        f"at most {MAX_GOSSIP_RECORDS} are taken"
    )
    wait_until(lambda: warnings_of(caplog, re.escape(refused)), PATIENCE)
    # One actor handles them in turn: a message sent after the forged ones is handled after.
    later = forged_sync(["a\n", "tcp://x:1", "alive", 0, 0], sender="mallory-2")
    assert send_gossip(a, later)["ok"]
    wait_until(lambda: warnings_of(caplog, "from mallory-2"), PATIENCE)
    assert set(table(a)) == {"a", "b"}
    assert set(a.ring_owners()) == {"a", "b"}
    assert len(warnings_of(caplog, "from mallory:")) == 1  # three refusals, one line
    membership_lines = [r for r in caplog.records if r.name == MEMBERSHIP_LOGGER]
    assert not any("f0" in r.getMessage() for r in membership_lines)


def test_a_name_with_a_control_character_is_refused_and_forges_no_log_line(
    pair: tuple[ActorSystem, ActorSystem], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = pair
    caplog.set_level(logging.INFO)
    name = "evil\n2030-01-01 00:00:00 INFO member b is dead"
    assert send_gossip(a, forged_sync([name, "tcp://10.9.9.9:1", "alive", 0, 0]))["ok"]
    assert send_gossip(a, forged_sync(sender="x\ny"))["ok"]
    wait_until(lambda: warnings_of(caplog, r"refusing gossip from x\\ny"), PATIENCE)
    assert warnings_of(caplog, "refusing gossip from mallory: member name must be printable")
    assert set(table(a)) == {"a", "b"}
    for record in caplog.records:
        assert "\n" not in record.getMessage() and "\r" not in record.getMessage()


def test_a_live_node_marked_left_at_the_top_incarnation_keeps_its_share(
    pair: tuple[ActorSystem, ActorSystem], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    caplog.set_level(logging.INFO)
    shares = a.ring_snapshot().partitions_owned()
    b_record = table(a)["b"]
    forged = forged_sync([b_record.name, b_record.endpoint, "left", MAX_COUNTER, 0])
    for node in (a, b):  # a third party's view, and the victim's own
        assert send_gossip(node, forged)["ok"]
    wait_until(lambda: len(warnings_of(caplog, "1 records refused")) == 2, PATIENCE)
    for node in (a, b):
        record = table(node)["b"]
        assert record.status is ALIVE and record.incarnation < 2**20
    assert a.ring_snapshot().partitions_owned() == shares
    a.client.put("after-forgery", 1)
    assert b.client.get("after-forgery") == 1


def test_a_left_accusation_a_step_ahead_is_refuted_by_the_live_node(
    pair: tuple[ActorSystem, ActorSystem],
) -> None:
    a, b = pair
    shares = a.ring_snapshot().partitions_owned()
    real = table(a)["b"]
    forged = forged_sync([real.name, real.endpoint, "left", real.incarnation + 1, 0])
    assert send_gossip(a, forged)["ok"]
    # a believes it for a moment; b hears of it through gossip and outranks it.
    wait_until(
        lambda: table(a)["b"].status is ALIVE and table(a)["b"].incarnation >= real.incarnation + 2,
        PATIENCE,
    )
    wait_until(lambda: a.ring_snapshot().partitions_owned() == shares, PATIENCE)
    assert table(b)["b"].status is ALIVE


def test_an_endpoint_pointed_at_the_attacker_gets_the_attacker_nothing(
    pair: tuple[ActorSystem, ActorSystem], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    caplog.set_level(logging.INFO)
    router: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    trap = f"tcp://127.0.0.1:{port}"
    assert b.endpoint is not None
    try:
        real = table(a)["b"]
        top = forged_sync(["b", trap, "alive", MAX_COUNTER, 0])
        assert send_gossip(a, top)["ok"]
        wait_until(lambda: warnings_of(caplog, "1 records refused"), PATIENCE)
        assert table(a)["b"].endpoint == real.endpoint
        assert a.ring_snapshot().endpoint_of("b") == real.endpoint
        for index in range(10):  # W is 2 of 2 here: each write reached the real b
            a.client.put(f"trap:{index}", index)
        assert [stored_values(b.endpoint, f"trap:{index}") for index in range(10)] == [
            [index] for index in range(10)
        ]
        # One step ahead is taken, and the real b takes its endpoint back at once.
        near = forged_sync(["b", trap, "alive", real.incarnation + 1, real.heartbeat + 1000])
        assert send_gossip(a, near)["ok"]
        wait_until(
            lambda: (
                table(a)["b"].endpoint == real.endpoint
                and table(a)["b"].incarnation >= real.incarnation + 2
                and a.ring_snapshot().endpoint_of("b") == real.endpoint
            ),
            PATIENCE,
        )
        for index in range(10, 20):
            a.client.put(f"trap:{index}", index)
        assert stored_values(b.endpoint, "trap:19") == [19]
    finally:
        router.close()


def test_remove_takes_out_a_forged_member_that_died(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = NodeConfig(
        name="a",
        bind="tcp://127.0.0.1:0",
        gossip_interval=0.05,
        suspect_timeout=0.3,
        dead_timeout=0.6,
        request_timeout=1.0,
    )
    with ActorSystem(config) as a:
        a.client.put("before", 1)
        assert send_gossip(a, forged_sync(["ghost", "tcp://127.0.0.1:9", "alive", 0, 0]))["ok"]
        wait_until(lambda: table(a).get("ghost") is not None, PATIENCE)
        wait_until(lambda: table(a)["ghost"].status is MemberStatus.DEAD, PATIENCE)
        # The dead ghost still counts towards N: a write waits for a second replica.
        assert a.ring_snapshot().n_val == 2
        with pytest.raises(UnavailableError):
            a.client.put("while-haunted", 1)

        gossip = a._services.gossip
        assert gossip is not None
        alive: RemoveResult = gossip.ask(Remove("a"))
        assert alive.outcome is RemoveOutcome.SELF
        # An admin's `remove`, over the wire: refused for a live member, with the reason.
        assert a.endpoint is not None
        with Client(a.endpoint, timeout=PATIENCE) as admin:
            with pytest.raises(BadRequestError, match="cannot remove: member 'a'"):
                admin.remove("a")
            with pytest.raises(BadRequestError, match="no member of that name"):
                admin.remove("nobody")
            admin.remove("ghost")
        wait_until(lambda: "ghost" not in {m.name for m in a.members()}, PATIENCE)
        assert table(a)["ghost"].status is MemberStatus.REMOVED  # the tombstone stays
        assert "ghost" not in {m["name"] for m in a.status()["members"]}
        assert a.ring_snapshot().n_val == 1
        a.client.put("after", 2)
        assert a.client.get("after") == 2 and a.client.get("before") == 1

        # Stale gossip of the dead ghost cannot bring it back.
        assert send_gossip(a, forged_sync(["ghost", "tcp://127.0.0.1:9", "dead", 0, 7]))["ok"]
        wait_until(lambda: table(a)["ghost"].heartbeat >= 7, PATIENCE)
        assert table(a)["ghost"].status is MemberStatus.REMOVED
        assert gossip.ask(Remove("ghost")).outcome is RemoveOutcome.ALREADY_REMOVED
        assert any(
            "ghost" in r.getMessage() and "removed" in r.getMessage() for r in caplog.records
        )
