"""Tests for what a node takes from gossip: bounded messages, tables and names, plausible
incarnations and heartbeats, refutation of forged records, tombstones (`remove`), the
refusal log, and a fuzz of the receive path (kvactors.core.membership, kvactors.core.gossip).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.core.gossip import (
    GOSSIP_FORMAT,
    MAX_GOSSIP_RECORDS,
    GossipState,
    Output,
    RefusalLog,
    Sync,
    SyncReply,
    claimed_sender,
    message_from_wire,
)
from kvactors.core.membership import (
    HEARTBEAT_LIMIT,
    INCARNATION_LIMIT,
    MAX_COUNTER,
    MAX_ENDPOINT_LENGTH,
    MAX_INCARNATION_STEP,
    MAX_MEMBERS,
    MAX_NAME_LENGTH,
    Member,
    MemberStatus,
    MemberTable,
    RemoveOutcome,
    RemoveResult,
    printable,
)
from kvactors.errors import BadRequestError

ALIVE, SUSPECT, DEAD = MemberStatus.ALIVE, MemberStatus.SUSPECT, MemberStatus.DEAD
JOINING, LEAVING, LEFT = MemberStatus.JOINING, MemberStatus.LEAVING, MemberStatus.LEFT
REMOVED = MemberStatus.REMOVED


def endpoint_of(name: str) -> str:
    return f"tcp://{name}:5555"


def record(
    name: str,
    status: MemberStatus = ALIVE,
    *,
    incarnation: int = 0,
    heartbeat: int = 0,
    endpoint: str | None = None,
    client_endpoint: str = "",
) -> Member:
    return Member(
        name, endpoint or endpoint_of(name), status, incarnation, heartbeat, client_endpoint
    )


def many(count: int, prefix: str = "m", status: MemberStatus = ALIVE) -> list[Member]:
    return [record(f"{prefix}{i:05d}", status) for i in range(count)]


def sync_from(sender: str, *members: Member) -> Sync:
    return Sync(sender, endpoint_of(sender), tuple(members))


def cluster(*names: str) -> dict[str, GossipState]:
    """Nodes that all know each other, ALIVE at incarnation 0."""
    records = [record(name, client_endpoint=f"tcp://{name}:6000") for name in names]
    table = MemberTable(records)
    return {r.name: GossipState(r, 0.0, table=table) for r in records}


def deliver(output: Output, nodes: dict[str, GossipState], now: float) -> None:
    """Deliver every message of `output` (and of the answers, in turn) through the wire."""
    pending = list(output.messages)
    while pending:
        outgoing = pending.pop(0)
        if outgoing.destination in nodes:
            message = message_from_wire(outgoing.message.to_wire())
            pending.extend(nodes[outgoing.destination].on_message(message, now).messages)


# ------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    "name", ["a\nb", "forged\n2024-01-01 INFO member x is alive", "a\rb", "\x1b[31mred", "a\tb"]
)
def test_a_name_with_a_control_character_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="printable"):
        Member(name, "tcp://a:1", ALIVE, 0, 0)
    with pytest.raises(ValueError, match="printable") as refused:
        Member.from_wire([name, "tcp://a:1", "alive", 0, 0])
    assert name not in str(refused.value)  # the text itself stays out of log lines
    wire = {**sync_from("a").to_wire(), "members": [[name, "tcp://a:1", "alive", 0, 0]]}
    with pytest.raises(BadRequestError):
        message_from_wire(wire)


@pytest.mark.parametrize("field", [1, 5])
def test_an_endpoint_with_a_control_character_is_refused(field: int) -> None:
    wire: list[Any] = ["a", "tcp://a:1", "alive", 0, 0, "tcp://a:2"]
    wire[field] = "tcp://a:1\n"
    with pytest.raises(ValueError, match="printable"):
        Member.from_wire(wire)


def test_a_sender_with_a_control_character_is_refused() -> None:
    wire = {**sync_from("a").to_wire(), "sender": "a\nb"}
    with pytest.raises(BadRequestError, match="printable"):
        message_from_wire(wire)


def test_printable_names_of_any_script_are_taken() -> None:
    for name in ("node 1", "nœud-é", "ノード", "a.b_c-d"):
        assert Member.from_wire([name, "tcp://a:1", "alive", 0, 0]).name == name


@pytest.mark.parametrize(
    ("name", "taken"),
    [
        ("x" * (MAX_NAME_LENGTH - 1), True),
        ("x" * MAX_NAME_LENGTH, True),
        ("x" * (MAX_NAME_LENGTH + 1), False),
        ("é" * (MAX_NAME_LENGTH // 2), True),  # 254 bytes
        ("é" * (MAX_NAME_LENGTH // 2) + "x", True),  # 255 bytes
        ("é" * (MAX_NAME_LENGTH // 2 + 1), False),  # 256 bytes in 128 characters
    ],
)
def test_names_are_bounded_in_utf8_bytes(name: str, taken: bool) -> None:
    wire = [name, "tcp://a:1", "alive", 0, 0]
    if taken:
        assert Member.from_wire(wire).name == name
    else:
        with pytest.raises(ValueError, match="bytes"):
            Member.from_wire(wire)


@pytest.mark.parametrize(
    ("size", "taken"),
    [
        (MAX_ENDPOINT_LENGTH - 1, True),
        (MAX_ENDPOINT_LENGTH, True),
        (MAX_ENDPOINT_LENGTH + 1, False),
    ],
)
def test_endpoints_are_bounded(size: int, taken: bool) -> None:
    endpoint = "tcp://" + "h" * (size - len("tcp://"))
    wire = ["a", endpoint, "alive", 0, 0]
    if taken:
        assert Member.from_wire(wire).endpoint == endpoint
    else:
        with pytest.raises(ValueError):
            Member.from_wire(wire)


def test_printable_escapes_control_characters_and_cuts_long_text() -> None:
    assert printable("node-1") == "node-1"
    assert printable("a\nb\x1b[31m") == "a\\nb\\x1b[31m"
    assert "\n" not in printable("x\n" * 500)
    assert printable("x" * 1000, 10) == "x" * 10 + "..."
    assert printable(b"a\nb") == "b'a\\nb'"


# ------------------------------------------------------------------------------ message size


def test_a_message_at_the_record_bound_is_taken_and_one_over_is_refused_whole() -> None:
    at_bound = sync_from("a", *many(MAX_GOSSIP_RECORDS))
    assert len(message_from_wire(at_bound.to_wire()).members) == MAX_GOSSIP_RECORDS
    under = sync_from("a", *many(MAX_GOSSIP_RECORDS - 1))
    assert len(message_from_wire(under.to_wire()).members) == MAX_GOSSIP_RECORDS - 1
    over = sync_from("a", *many(MAX_GOSSIP_RECORDS + 1)).to_wire()
    with pytest.raises(BadRequestError, match=f"at most {MAX_GOSSIP_RECORDS}"):
        message_from_wire(over)


def test_an_oversized_message_is_refused_before_any_record_is_read() -> None:
    # 45,000 records that are not even records: the count alone refuses the message.
    wire = {**sync_from("a").to_wire(), "members": [None] * 45_000}
    with pytest.raises(BadRequestError, match="45000 members"):
        message_from_wire(wire)


def test_the_message_bound_holds_a_full_table() -> None:
    assert MAX_GOSSIP_RECORDS >= MAX_MEMBERS


# ------------------------------------------------------------------------------ table size


def full_table(tombstones: int = 0) -> MemberTable:
    records = many(MAX_MEMBERS - tombstones)
    records += many(tombstones, prefix="gone", status=REMOVED)
    return MemberTable(records)


def test_a_table_one_under_its_bound_takes_one_more_member() -> None:
    table = MemberTable(many(MAX_MEMBERS - 1))
    result = table.merge_tracking([record("new"), record("newer")])
    assert len(result.table) == MAX_MEMBERS
    assert "new" in result.table and "newer" not in result.table
    assert result.ignored == 1


def test_a_full_table_ignores_new_names_and_counts_them_but_still_merges_known_ones() -> None:
    table = full_table()
    known = record("m00003", SUSPECT)
    result = table.merge_tracking([record("stranger"), known, record("other")])
    assert len(result.table) == MAX_MEMBERS
    assert "stranger" not in result.table and "other" not in result.table
    assert result.ignored == 2
    assert result.table["m00003"].status is SUSPECT


def test_a_new_member_takes_the_place_of_a_tombstone_in_a_full_table() -> None:
    table = full_table(tombstones=2)
    result = table.merge_tracking([record("first"), record("second"), record("third")])
    assert len(result.table) == MAX_MEMBERS
    assert {"first", "second"} <= set(result.table) and "third" not in result.table
    assert "gone00000" not in result.table and "gone00001" not in result.table
    assert result.ignored == 1


def test_a_tombstone_of_an_unknown_name_takes_no_place_in_a_full_table() -> None:
    table = full_table(tombstones=1)
    result = table.merge_tracking([record("stranger", REMOVED)])
    assert result.table is table and result.ignored == 1


def test_the_table_bound_applies_at_a_node_receiving_gossip() -> None:
    nodes = cluster("a", "b")
    a = nodes["a"]
    output = a.on_message(sync_from("b", *many(MAX_MEMBERS)), 1.0)
    assert len(a.table) == MAX_MEMBERS
    assert output.ignored == 2 and a.ignored_members == 2  # a and b were there first
    assert a.table["b"].status is ALIVE and a.me.status is ALIVE


# ------------------------------------------------------------------------------ plausibility


@pytest.mark.parametrize(
    ("ahead", "taken"),
    [
        (MAX_INCARNATION_STEP - 1, True),
        (MAX_INCARNATION_STEP, True),
        (MAX_INCARNATION_STEP + 1, False),
    ],
)
def test_a_record_is_taken_at_most_a_step_ahead_of_the_one_held(ahead: int, taken: bool) -> None:
    held = record("b", incarnation=7)
    table = MemberTable([held])
    result = table.merge_tracking([record("b", LEFT, incarnation=7 + ahead)])
    if taken:
        assert result.table["b"].status is LEFT and result.refused == 0
    else:
        assert result.table is table and result.refused == 1


@pytest.mark.parametrize(
    ("incarnation", "taken"),
    [(INCARNATION_LIMIT - 1, True), (INCARNATION_LIMIT, True), (INCARNATION_LIMIT + 1, False)],
)
def test_a_new_member_is_taken_up_to_the_incarnation_limit(incarnation: int, taken: bool) -> None:
    result = MemberTable().merge_tracking([record("b", incarnation=incarnation)])
    assert ("b" in result.table) is taken
    assert result.refused == (0 if taken else 1)


@pytest.mark.parametrize(
    ("heartbeat", "taken"),
    [(HEARTBEAT_LIMIT - 1, True), (HEARTBEAT_LIMIT, True), (HEARTBEAT_LIMIT + 1, False)],
)
def test_heartbeats_are_taken_up_to_their_limit(heartbeat: int, taken: bool) -> None:
    table = MemberTable([record("b", heartbeat=5)])
    result = table.merge_tracking([record("b", heartbeat=heartbeat)])
    assert result.table["b"].heartbeat == (heartbeat if taken else 5)
    assert result.refused == (0 if taken else 1)


def test_a_live_node_marked_left_at_the_top_incarnation_stays_a_member() -> None:
    nodes = cluster("a", "b", "c")
    forged = sync_from("c", record("a", LEFT, incarnation=MAX_COUNTER))
    for name in ("a", "b"):  # the victim itself, and a third node
        output = nodes[name].on_message(forged, 1.0)
        assert output.refused == 1 and not output.changes
        assert nodes[name].table["a"].status is ALIVE
        assert nodes[name].table["a"].incarnation == 0
    assert nodes["a"].me.status is ALIVE


def test_a_left_accusation_within_the_step_is_refuted_and_the_refutation_spreads() -> None:
    nodes = cluster("a", "b", "c")
    forged = sync_from("c", record("a", LEFT, incarnation=MAX_INCARNATION_STEP))
    nodes["b"].on_message(forged, 1.0)
    assert nodes["b"].table["a"].status is LEFT  # taken: it is within the step
    nodes["a"].on_message(forged, 1.0)
    assert nodes["a"].me.status is ALIVE
    assert nodes["a"].me.incarnation == MAX_INCARNATION_STEP + 1
    deliver(nodes["a"].sync_everyone(), nodes, 1.5)
    assert nodes["b"].table["a"].status is ALIVE
    assert nodes["b"].table["a"].incarnation == MAX_INCARNATION_STEP + 1


def test_an_endpoint_pointed_elsewhere_is_refused_far_ahead_and_refuted_near() -> None:
    nodes = cluster("a", "b", "c")
    attacker = "tcp://attacker:6666"
    far = sync_from("c", record("a", incarnation=MAX_COUNTER, endpoint=attacker))
    assert nodes["b"].on_message(far, 1.0).refused == 1
    assert nodes["b"].table["a"].endpoint == endpoint_of("a")

    near = sync_from("c", record("a", incarnation=1, heartbeat=99, endpoint=attacker))
    nodes["b"].on_message(near, 1.0)
    assert nodes["b"].table["a"].endpoint == attacker  # believed for now
    nodes["a"].on_message(near, 1.0)  # the real node hears of it
    assert nodes["a"].me.endpoint == endpoint_of("a") and nodes["a"].me.incarnation == 2
    deliver(nodes["a"].sync_everyone(), nodes, 1.5)
    assert nodes["b"].table["a"].endpoint == endpoint_of("a")


def test_a_forged_client_endpoint_at_the_same_incarnation_is_refuted() -> None:
    nodes = cluster("a", "b")
    forged = record("a", heartbeat=50, client_endpoint="tcp://attacker:6000")
    nodes["b"].on_message(sync_from("c", forged), 1.0)
    assert nodes["b"].table["a"].client_endpoint == "tcp://attacker:6000"
    nodes["a"].on_message(sync_from("c", forged), 1.0)
    assert nodes["a"].me.client_endpoint == "tcp://a:6000" and nodes["a"].me.incarnation == 1
    deliver(nodes["a"].sync_everyone(), nodes, 1.5)
    assert nodes["b"].table["a"].client_endpoint == "tcp://a:6000"


def test_a_forged_tombstone_of_a_live_node_is_refuted() -> None:
    nodes = cluster("a", "b")
    forged = sync_from("c", record("a", REMOVED, incarnation=3))
    nodes["b"].on_message(forged, 1.0)
    assert nodes["b"].table["a"].status is REMOVED
    nodes["a"].on_message(forged, 1.0)
    assert nodes["a"].me.status is ALIVE and nodes["a"].me.incarnation == 4
    deliver(nodes["a"].sync_everyone(), nodes, 1.5)
    assert nodes["b"].table["a"].status is ALIVE


# ------------------------------------------------------------------------------ remove


@pytest.mark.parametrize("status", [JOINING, ALIVE, LEAVING, SUSPECT])
def test_only_a_dead_or_left_member_can_be_removed(status: MemberStatus) -> None:
    table = MemberTable([record("b", status)])
    assert table.remove("b") == (table, RemoveOutcome.NOT_DOWN)
    assert not RemoveOutcome.NOT_DOWN.removed


@pytest.mark.parametrize("status", [DEAD, LEFT])
def test_removing_leaves_a_tombstone_at_the_members_incarnation(status: MemberStatus) -> None:
    table = MemberTable([record("b", status, incarnation=4, heartbeat=9)])
    removed, outcome = table.remove("b")
    assert outcome is RemoveOutcome.REMOVED and outcome.removed
    assert removed["b"] == record("b", REMOVED, incarnation=4, heartbeat=9)
    assert table["b"].status is status  # the original is unchanged
    assert removed.remove("b") == (removed, RemoveOutcome.ALREADY_REMOVED)
    assert table.remove("nobody") == (table, RemoveOutcome.UNKNOWN)


@pytest.mark.parametrize("status", list(MemberStatus))
def test_stale_gossip_cannot_bring_a_removed_member_back(status: MemberStatus) -> None:
    table, _ = MemberTable([record("b", DEAD, incarnation=4)]).remove("b")
    for incarnation in (0, 3, 4):
        stale = record("b", status, incarnation=incarnation, heartbeat=100)
        assert table.merge_tracking([stale]).table["b"].status is REMOVED


def test_a_removed_member_that_runs_again_is_a_member_again() -> None:
    table, _ = MemberTable([record("b", DEAD, incarnation=4)]).remove("b")
    merged, _ = table.merge([record("b", ALIVE, incarnation=5)])
    assert merged["b"].status is ALIVE


def test_remove_through_the_gossip_state_spreads_the_tombstone() -> None:
    nodes = cluster("a", "b", "c")
    dead = record("c", DEAD)
    for name in ("a", "b"):
        nodes[name].on_message(sync_from("x", dead), 1.0)
    rng = random.Random(3)
    result, output = nodes["a"].remove("c", 2.0, rng)
    assert result == RemoveResult("c", RemoveOutcome.REMOVED, DEAD)
    assert [(c.before, c.after.status) for c in output.changes] == [(dead, REMOVED)]
    assert {m.destination for m in output.messages} == {"b"}  # c is not reachable
    deliver(output, nodes, 2.0)
    assert nodes["b"].table["c"].status is REMOVED
    # The dead member's stale record, relayed by someone who missed the removal, loses.
    nodes["a"].on_message(sync_from("x", dead), 3.0)
    assert nodes["a"].table["c"].status is REMOVED


def test_remove_refuses_live_members_unknown_names_and_this_node() -> None:
    nodes = cluster("a", "b")
    rng = random.Random(4)
    alive, output = nodes["a"].remove("b", 1.0, rng)
    assert alive.outcome is RemoveOutcome.NOT_DOWN and output == Output()
    assert alive.describe() == "member 'b' is alive: only a dead or left member can be removed"
    unknown, _ = nodes["a"].remove("zed\n", 1.0, rng)
    assert unknown.outcome is RemoveOutcome.UNKNOWN and unknown.status is None
    assert "\n" not in unknown.describe()
    itself, _ = nodes["a"].remove("a", 1.0, rng)
    assert itself.outcome is RemoveOutcome.SELF
    assert nodes["a"].table["b"].status is ALIVE


def test_a_tombstone_is_not_watched_nor_probed() -> None:
    nodes = cluster("a", "b")
    a = nodes["a"]
    a.on_message(sync_from("x", record("b", DEAD)), 1.0)
    a.remove("b", 1.0, random.Random(5))
    assert a.silence("b", 100.0) is None
    rng = random.Random(6)
    for step in range(1, 200):
        output = a.tick(1.0 + step, rng)
        assert not output.changes and not output.messages  # nobody left to talk to
    assert a.table["b"].status is REMOVED


# ------------------------------------------------------------------------------ refusal log


def test_the_refusal_log_logs_each_sender_once_per_interval() -> None:
    log = RefusalLog(interval=10.0, max_senders=2)
    assert log.note("x", 0.0)
    assert not log.note("x", 1.0)
    assert log.note("y", 2.0)
    assert not log.note("z", 3.0)  # past max_senders: counted only
    assert log.summary(9.0) == 0  # the interval is not over
    assert log.summary(10.0) == 2
    assert log.summary(11.0) == 0  # counted once
    assert log.note("x", 11.0)  # a new interval


def test_ninety_thousand_refusals_cost_a_few_lines() -> None:
    log = RefusalLog(interval=10.0)
    logged = sum(log.note(f"sender-{i % 45_000}", i / 90_000) for i in range(90_000))
    assert logged == 8
    assert log.summary(10.0) == 90_000 - 8


def test_claimed_sender_is_fit_for_a_log_line() -> None:
    assert claimed_sender({"sender": "b"}) == "b"
    assert claimed_sender({"sender": "b\nforged line"}) == "b\\nforged line"
    assert claimed_sender({"sender": 7}) == "unknown"
    assert claimed_sender([1, 2]) == "unknown"
    assert len(claimed_sender({"sender": "x" * 100_000})) <= MAX_NAME_LENGTH + 3


# ------------------------------------------------------------------------------ fuzz

text = st.one_of(
    st.sampled_from(["a", "b", "c", "node-1", endpoint_of("a"), endpoint_of("b")]),
    st.text(max_size=20),
    st.text(min_size=250, max_size=300),
)
counter = st.one_of(
    st.integers(0, 5),
    st.sampled_from([MAX_INCARNATION_STEP, INCARNATION_LIMIT, MAX_COUNTER, MAX_COUNTER + 1]),
    st.integers(-(2**70), 2**70),
)
scalar = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True), st.binary(max_size=8), text, counter
)
status = st.one_of(st.sampled_from([s.value for s in MemberStatus]), scalar)
member_wire = st.one_of(
    st.tuples(text, text, status, counter, counter).map(list),
    st.tuples(text, text, status, counter, counter, text).map(list),
    st.lists(scalar, max_size=7),
    scalar,
)
message_wire = st.fixed_dictionaries(
    {
        "format": st.one_of(st.just(GOSSIP_FORMAT), scalar),
        "type": st.one_of(st.sampled_from(["sync", "sync_reply"]), scalar, st.lists(scalar)),
        "sender": st.one_of(st.sampled_from(["b", "c", "a"]), scalar),
        "endpoint": st.one_of(st.just(endpoint_of("b")), scalar),
        "members": st.one_of(st.lists(member_wire, max_size=6), scalar),
    },
    optional={"extra": scalar},
)
anything = st.one_of(
    message_wire,
    scalar,
    st.lists(scalar, max_size=4),
    st.dictionaries(st.one_of(text, st.integers()), scalar, max_size=4),
)


@settings(max_examples=2_500, deadline=None)
@given(anything)
def test_the_receive_path_takes_anything_and_refuses_only_with_its_typed_error(
    wire: object,
) -> None:
    nodes = cluster("a", "b")
    a = nodes["a"]
    try:
        message = message_from_wire(wire)
    except BadRequestError as exc:
        assert str(exc).isprintable()
        return
    assert isinstance(message, Sync | SyncReply)
    output = a.on_message(message, 1.0)
    assert len(a.table) <= MAX_MEMBERS
    assert a.me.status is ALIVE and a.me.endpoint == endpoint_of("a")
    assert a.me.client_endpoint == "tcp://a:6000"
    assert all(name.isprintable() for name in a.table)
    for outgoing in output.messages:  # what it sends is readable by its peers
        assert message_from_wire(outgoing.message.to_wire()) == outgoing.message
    a.tick(2.0, random.Random(0))


@settings(max_examples=2_000, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from(list(MemberStatus)), counter)))
def test_a_live_node_stays_alive_whatever_records_of_it_arrive(
    claims: list[tuple[str, MemberStatus, int]],
) -> None:
    nodes = cluster("a", "b")
    a = nodes["a"]
    for name, claimed, incarnation in claims:
        if not 0 <= incarnation <= MAX_COUNTER:
            continue
        forged = record(name, claimed, incarnation=incarnation)
        a.on_message(sync_from("x", forged), 1.0)
        assert a.me.status is ALIVE
        held = a.table["a"]
        assert held == a.me
    # Each record it took moved it at most a step and one refutation ahead.
    assert a.me.incarnation <= len(claims) * (MAX_INCARNATION_STEP + 1)
