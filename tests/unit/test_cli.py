"""`kvactors status`'s table: what a person reads, from the status reply."""

from __future__ import annotations

from typing import Any

from kvactors.cli import format_plan, format_status
from kvactors.core.ring import Ring

FIELDS = ("name", "endpoint", "status", "incarnation", "partitions")
MEMBERS = [
    dict(zip(FIELDS, ("node-1", "tcp://a:1", "alive", 0, 9), strict=True)),
    dict(zip(FIELDS, ("node-2", "tcp://a:2", "dead", 3, 0), strict=True)),
]


def status(**extra: Any) -> dict[str, Any]:
    return {
        "node": "node-1",
        "partitions": 16,
        "members": MEMBERS,
        "ring": {"owners": 1, "balance": 1.0},
        **extra,
    }


def test_the_member_table_and_the_ring_line() -> None:
    text = format_status(status())
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "ENDPOINT", "STATUS", "INCARNATION", "PARTITIONS"]
    assert lines[2].split() == ["node-2", "tcp://a:2", "dead", "3", "0"]
    assert "as seen by node-1: 16 partitions over 1 owning members" in text
    assert "hints" not in text and "anti-entropy" not in text


def test_hints_pending_per_target_and_anti_entropy_repairs() -> None:
    text = format_status(
        status(
            storage={"backend": "lmdb", "keys": 1234},
            hints={"pending": {"node-2": 17}, "stored": 20, "delivered": 3, "dropped": 0},
            anti_entropy={"exchanges": 5, "keys_repaired": 40, "keys_deferred": 2},
        )
    )
    assert "storage: lmdb, 1234 keys stored" in text
    assert "hints pending: node-2 17; delivered 3, dropped 0" in text
    assert "anti-entropy: 5 exchanges, 40 keys repaired, 2 deferred" in text


def test_no_hints_pending_says_none() -> None:
    text = format_status(status(hints={"pending": {}, "delivered": 0, "dropped": 0}))
    assert "hints pending: none; delivered 0, dropped 0" in text


def plan_of(count: int, stored_bytes: int = 0) -> list[str]:
    members = [
        dict(zip(FIELDS, (f"node-{i}", "tcp://a", "alive", 0, 0), strict=True))
        for i in range(1, count + 1)
    ]
    reply = status(
        members=members,
        partitions=2048,
        replication={"replicas": 3, "n": min(3, count)},
        storage={"bytes": stored_bytes},
    )
    return format_plan(reply)


def moved(line: str) -> tuple[int, int]:
    """(partitions, replica transfers) of one plan line."""
    words = line.split(": ", 1)[1].split()
    return int(words[0]), int(words[2])


def test_a_join_moves_about_the_newcomers_share_and_no_more() -> None:
    lines = plan_of(3, stored_bytes=3 * 1024 * 1024)
    assert lines[1].startswith("  one more node (node-4) joins")
    partitions, transfers = moved(lines[1])
    ideal = 3 * 2048 / 4  # N of the Q replica slots per member, of n+1 members
    assert ideal <= transfers <= 1.10 * ideal
    assert partitions == transfers  # one newcomer: one transfer per partition it enters
    # 3 MiB over the 2048 partitions this node replicates: 1.5 KiB per transfer.
    assert f"about {transfers * 1.5 / 1024:,.1f} MiB" in lines[1]


def test_a_leave_that_keeps_n_members_moves_the_leavers_share() -> None:
    """Every partition the leaver replicated gains exactly one member, and no other moves."""
    ring = Ring.build([f"node-{i}" for i in range(1, 5)], partitions=2048, replicas=3)
    leaves = [line for line in plan_of(4) if "leaves" in line]
    assert len(leaves) == 4
    for number, line in enumerate(leaves, start=1):
        share = sum(
            f"node-{number}" in ring.preference_list(partition, 3) for partition in range(2048)
        )
        assert moved(line) == (share, share), line


def test_a_leave_below_n_moves_nothing() -> None:
    """Three nodes, N=3: each holds every partition, so the two left hold everything."""
    leaves = [line for line in plan_of(3) if "leaves" in line]
    assert [moved(line) for line in leaves] == [(0, 0)] * 3


def test_a_leaving_node_shows_its_handoff() -> None:
    running = {
        "partition": 7,
        "to": "node-2",
        "keys_sent": 40,
        "keys": 100,
        "bytes_sent": 4096,
        "keys_per_second": 20.0,
        "eta_seconds": 3.0,
    }
    text = format_status(
        status(
            handoff={
                "transfers": 10,
                "done": 4,
                "waiting": 5,
                "keys_sent": 440,
                "running": [running],
            }
        )
    )
    assert "leaving, handing over: 4 of 10 partition transfers done, 5 waiting" in text
    me = status()["node"]
    assert (
        f"partition 7 from {me} to node-2: 40 of 100 keys, 4.0 KiB, 20.0 keys/s, ETA 3.0 s" in text
    )


def test_a_joining_node_shows_its_pulls_and_a_node_its_dropped_copies() -> None:
    running = {
        "partition": 9,
        "from": "node-1",
        "to": "node-4",
        "keys_sent": 300,
        "bytes_sent": 3 * 1024 * 1024,
        "keys_per_second": 150.0,
        "eta_seconds": 2,
    }
    join = {
        "partitions": 1581,
        "done": 1200,
        "waiting": 365,
        "keys_received": 61000,
        "bytes_received": 5 * 1024 * 1024,
        "failed_calls": 0,
        "catch_up_rounds": 0,
        "caught_up": False,
        "running": [running],
    }
    text = format_status(status(join=join, dropped={"partitions": 3, "keys": 120}))
    assert "joined (next owner): 1200 of 1581 partitions pulled, 365 waiting" in text
    assert "61000 keys (5.0 MiB) received" in text
    assert "partition 9 from node-1 to node-4: 300 keys, 3.0 MiB, 150.0 keys/s, ETA 2 s" in text
    assert "dropped copies no longer replicated here: 120 keys of 3 partitions" in text
    founder = format_status(status(join={**join, "partitions": 0}, dropped={"keys": 0}))
    assert "joined" not in founder and "dropped" not in founder
