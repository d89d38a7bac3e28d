"""Tests for kvactors.core.membership: records, the merge rule, the member table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvactors.core.membership import (
    MAX_ENDPOINT_LENGTH,
    MAX_NAME_LENGTH,
    Member,
    MemberChange,
    MemberStatus,
    MemberTable,
    is_membership_change,
)

ALIVE, SUSPECT, DEAD = MemberStatus.ALIVE, MemberStatus.SUSPECT, MemberStatus.DEAD
JOINING, LEAVING, LEFT = MemberStatus.JOINING, MemberStatus.LEAVING, MemberStatus.LEFT
REMOVED = MemberStatus.REMOVED


def member(
    name: str = "a",
    status: MemberStatus = ALIVE,
    incarnation: int = 0,
    heartbeat: int = 0,
    endpoint: str | None = None,
) -> Member:
    return Member(name, endpoint or f"tcp://{name}:5555", status, incarnation, heartbeat)


NAMES = ("a", "b", "c", "d")
members = st.builds(
    Member,
    name=st.sampled_from(NAMES),
    endpoint=st.sampled_from(("tcp://h1:1", "tcp://h2:2")),
    status=st.sampled_from(MemberStatus),
    incarnation=st.integers(0, 3),
    heartbeat=st.integers(0, 5),
)
tables = st.lists(members, unique_by=lambda m: m.name).map(MemberTable)


def reference_merge(*records: Member) -> Member:
    """The documented rule, written independently: the record of highest
    (incarnation, status strength, endpoint) with the highest heartbeat of all."""
    order = [JOINING, ALIVE, LEAVING, SUSPECT, DEAD, LEFT, REMOVED]
    best = max(records, key=lambda m: (m.incarnation, order.index(m.status), m.endpoint))
    heartbeat = max(m.heartbeat for m in records)
    return Member(best.name, best.endpoint, best.status, best.incarnation, heartbeat)


# ------------------------------------------------------------------------------ the merge rule


@pytest.mark.parametrize(
    ("weaker", "stronger"),
    [
        (JOINING, ALIVE),
        (ALIVE, LEAVING),
        (LEAVING, SUSPECT),
        (SUSPECT, DEAD),
        (DEAD, LEFT),
        (LEFT, REMOVED),
    ],
)
def test_stronger_status_wins_at_equal_incarnation(
    weaker: MemberStatus, stronger: MemberStatus
) -> None:
    low, high = member(status=weaker, incarnation=2), member(status=stronger, incarnation=2)
    assert low.merged_with(high) is high
    assert high.merged_with(low) is high


def test_higher_incarnation_wins_over_any_status() -> None:
    accused = member(status=DEAD, incarnation=4, heartbeat=10)
    refuted = member(status=ALIVE, incarnation=5, heartbeat=10)
    assert accused.merged_with(refuted) is refuted
    left = member(status=LEFT, incarnation=1)
    rejoined = member(status=JOINING, incarnation=2)
    assert left.merged_with(rejoined) is rejoined


def test_heartbeat_is_the_max_whichever_record_wins() -> None:
    suspicion = member(status=SUSPECT, incarnation=1, heartbeat=3)
    fresher = member(status=ALIVE, incarnation=1, heartbeat=9)
    merged = suspicion.merged_with(fresher)
    assert (merged.status, merged.incarnation, merged.heartbeat) == (SUSPECT, 1, 9)
    assert fresher.merged_with(suspicion) == merged


def test_endpoint_follows_the_winning_incarnation() -> None:
    old = member(incarnation=1, heartbeat=50, endpoint="tcp://old:1")
    moved = member(incarnation=2, heartbeat=0, endpoint="tcp://new:2")
    merged = old.merged_with(moved)
    assert (merged.endpoint, merged.heartbeat) == ("tcp://new:2", 50)


def test_merging_an_older_record_returns_the_same_object() -> None:
    newer = member(heartbeat=5)
    assert newer.merged_with(member(heartbeat=4)) is newer
    assert newer.merged_with(member(heartbeat=5)) is newer


def test_records_of_different_members_do_not_merge() -> None:
    with pytest.raises(ValueError):
        member("a").merged_with(member("b"))


@given(members, members, members)
def test_record_merge_matches_the_documented_rule(x: Member, y: Member, z: Member) -> None:
    y, z = (Member(x.name, m.endpoint, m.status, m.incarnation, m.heartbeat) for m in (y, z))
    assert x.merged_with(y) == reference_merge(x, y)
    assert x.merged_with(y).merged_with(z) == reference_merge(x, y, z)


def test_precedence_is_derived_and_not_compared() -> None:
    record = member(status=SUSPECT, incarnation=3, endpoint="tcp://x:1")
    assert record.precedence == (3, SUSPECT.rank, "tcp://x:1")
    assert record == member(status=SUSPECT, incarnation=3, endpoint="tcp://x:1")
    assert "precedence" not in repr(record)


def test_reachable_statuses() -> None:
    assert {s for s in MemberStatus if s.is_reachable} == {JOINING, ALIVE, LEAVING, SUSPECT}


@pytest.mark.parametrize(
    ("incarnation", "heartbeat", "name"), [(-1, 0, "a"), (0, -1, "a"), (0, 0, "")]
)
def test_invalid_records_are_refused(incarnation: int, heartbeat: int, name: str) -> None:
    with pytest.raises(ValueError):
        Member(name, "tcp://x:1", ALIVE, incarnation, heartbeat)


# ------------------------------------------------------------------------------ the table


def test_table_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        MemberTable([member("a"), member("a", heartbeat=1)])


def test_table_is_a_read_only_mapping() -> None:
    table = MemberTable([member("a"), member("b")])
    assert list(table) == ["a", "b"]
    assert table["b"] == member("b")
    assert "c" not in table and len(table) == 2
    assert table.members() == (member("a"), member("b"))
    with pytest.raises(TypeError):
        table["c"] = member("c")  # type: ignore[index]
    with pytest.raises(TypeError):
        hash(table)


def test_with_member_replaces_outright_and_leaves_the_original() -> None:
    table = MemberTable([member("a", status=SUSPECT, incarnation=3)])
    updated = table.with_member(member("a", status=ALIVE, incarnation=0))
    assert updated["a"].status is ALIVE
    assert table["a"].status is SUSPECT


def test_merge_reports_new_members_and_status_changes() -> None:
    ours = MemberTable([member("a"), member("b", heartbeat=1)])
    theirs = MemberTable([member("a", status=SUSPECT), member("b", heartbeat=7), member("c")])
    merged, changes = ours.merge(theirs)
    assert merged == MemberTable(
        [member("a", status=SUSPECT), member("b", heartbeat=7), member("c")]
    )
    assert set(changes) == {
        MemberChange(member("a"), member("a", status=SUSPECT)),
        MemberChange(None, member("c")),
    }
    assert ours["a"].status is ALIVE and "c" not in ours  # untouched


def test_merge_that_brings_nothing_returns_the_same_table() -> None:
    ours = MemberTable([member("a", heartbeat=5), member("b")])
    merged, changes = ours.merge([member("a", heartbeat=2)])
    assert merged is ours and changes == ()


def test_merge_tracking_reports_advances_and_what_the_other_side_lacks() -> None:
    ours = MemberTable([member("a", heartbeat=5), member("b", heartbeat=1), member("d")])
    theirs = [member("a", heartbeat=2), member("b", heartbeat=4), member("c")]
    result = ours.merge_tracking(theirs)
    assert result.advanced == {"b", "c"}
    assert result.differing == (member("a", heartbeat=5),)
    assert [change.name for change in result.changes] == ["c"]


def test_merge_tracking_counts_a_refutation_as_an_advance() -> None:
    ours = MemberTable([member("a", status=DEAD, incarnation=1, heartbeat=9)])
    result = ours.merge_tracking([member("a", status=ALIVE, incarnation=2, heartbeat=3)])
    assert result.advanced == {"a"}
    assert result.table["a"] == member("a", status=ALIVE, incarnation=2, heartbeat=9)


def test_membership_change_ignores_heartbeats() -> None:
    assert not is_membership_change(member(heartbeat=1), member(heartbeat=2))
    assert is_membership_change(None, member())
    assert is_membership_change(member(), member(incarnation=1))
    assert is_membership_change(member(), member(endpoint="tcp://elsewhere:1"))


@given(tables, tables)
def test_merge_is_commutative(x: MemberTable, y: MemberTable) -> None:
    assert x.merge(y)[0] == y.merge(x)[0]


@given(tables, tables, tables)
def test_merge_is_associative(x: MemberTable, y: MemberTable, z: MemberTable) -> None:
    assert x.merge(y)[0].merge(z)[0] == x.merge(y.merge(z)[0])[0]


@given(tables, tables)
def test_merge_is_idempotent(x: MemberTable, y: MemberTable) -> None:
    assert x.merge(x)[0] == x
    merged = x.merge(y)[0]
    assert merged.merge(y)[0] == merged
    assert merged.merge(x)[0] == merged


@given(tables, tables)
def test_merge_matches_the_rule_and_reports_exactly_what_changed(
    x: MemberTable, y: MemberTable
) -> None:
    result = x.merge_tracking(y)
    assert set(result.table) == set(x) | set(y)
    for name, after in result.table.items():
        sources = [t[name] for t in (x, y) if name in t]
        assert after == reference_merge(*sources)
    expected_changes = {
        MemberChange(x.get(name), result.table[name])
        for name in result.table
        if x.get(name) != result.table[name]
        and is_membership_change(x.get(name), result.table[name])
    }
    assert set(result.changes) == expected_changes
    assert result.advanced == {
        name
        for name, after in result.table.items()
        if name not in x
        or after.heartbeat > x[name].heartbeat
        or after.incarnation > x[name].incarnation
    }
    assert set(result.differing) == {
        result.table[name] for name in y if result.table[name] != y[name]
    }


# ------------------------------------------------------------------------------ wire form


@given(members)
def test_member_wire_round_trip(record: Member) -> None:
    wire = record.to_wire()
    assert all(type(item) in (str, int) for item in wire)
    assert Member.from_wire(wire) == record
    assert Member.from_wire(tuple(wire)) == record


@pytest.mark.parametrize(
    "data",
    [
        None,
        "a",
        {"name": "a"},
        ["a", "tcp://a:1", "alive", 0],
        ["a", "tcp://a:1", "alive", 0, 0, 0],
        ["", "tcp://a:1", "alive", 0, 0],
        ["x" * (MAX_NAME_LENGTH + 1), "tcp://a:1", "alive", 0, 0],
        [b"a", "tcp://a:1", "alive", 0, 0],
        ["a", 5, "alive", 0, 0],
        ["a", "tcp://a:1", "zombie", 0, 0],
        ["a", "tcp://a:1", 1, 0, 0],
        ["a", "tcp://a:1", "alive", -1, 0],
        ["a", "tcp://a:1", "alive", 0, True],
        ["a", "tcp://a:1", "alive", 1.0, 0],
        ["a", "tcp://a:1", "alive", 0, 2**63],
    ],
)
def test_malformed_member_wire_is_refused(data: object) -> None:
    with pytest.raises(ValueError):
        Member.from_wire(data)


# ------------------------------------------------------------------------------ client endpoint


def test_client_endpoint_travels_and_an_absent_one_is_empty() -> None:
    record = Member("a", "tcp://a:6001", ALIVE, 3, 4, "tcp://a:6000")
    wire = record.to_wire()
    assert wire[-1] == "tcp://a:6000"
    assert Member.from_wire(wire) == record
    plain = member("a", incarnation=3, heartbeat=4, endpoint="tcp://a:6001")
    assert plain.client_endpoint == ""
    assert len(plain.to_wire()) == 5  # the record as it was before the field
    assert Member.from_wire(plain.to_wire()).client_endpoint == ""
    assert Member.from_wire([*plain.to_wire(), ""]) == plain


@pytest.mark.parametrize(
    "client_endpoint", [7, None, b"tcp://a:6000", "x" * (MAX_ENDPOINT_LENGTH + 1)]
)
def test_a_malformed_client_endpoint_is_refused(client_endpoint: object) -> None:
    with pytest.raises(ValueError):
        Member.from_wire(["a", "tcp://a:6001", "alive", 0, 0, client_endpoint])


def test_client_endpoint_at_its_length_limit_is_taken() -> None:
    longest = "x" * MAX_ENDPOINT_LENGTH
    assert Member.from_wire(["a", "tcp://a:1", "alive", 0, 0, longest]).client_endpoint == longest
    with pytest.raises(ValueError):
        Member("a", "tcp://a:1", ALIVE, 0, 0, longest + "x")


def test_client_endpoint_takes_no_part_in_precedence() -> None:
    with_client = Member("a", "tcp://a:1", ALIVE, 2, 0, "tcp://a:2")
    without = Member("a", "tcp://a:1", ALIVE, 2, 0)
    assert with_client.precedence == without.precedence
    assert not is_membership_change(without, with_client)
    newer = Member("a", "tcp://a:1", ALIVE, 3, 0, "tcp://a:2")
    assert without.merged_with(newer) is newer
    assert newer.merged_with(without) is newer
