"""Ring snapshots: who owns partitions, and how requests are routed."""

from __future__ import annotations

from kvactors.core.membership import Member, MemberStatus
from kvactors.core.placement import build_snapshot

Q = 256


def member(name: str, status: MemberStatus = MemberStatus.ALIVE) -> Member:
    return Member(name, f"tcp://{name}:5555", status, 0, 0)


def test_a_lone_node_owns_everything_and_routes_locally() -> None:
    me = member("a")
    snapshot = build_snapshot(0, me, [me], Q)
    assert snapshot.route == (None,) * Q
    assert snapshot.partitions_owned() == {"a": Q}


def test_routes_point_at_the_owner_endpoint_or_none_for_this_node() -> None:
    me, others = member("a"), [member("b"), member("c")]
    snapshot = build_snapshot(1, me, [me, *others], Q)
    for partition, route in enumerate(snapshot.route):
        owner = snapshot.owner(partition)
        assert route == (None if owner == "a" else f"tcp://{owner}:5555")
    assert set(snapshot.partitions_owned()) == {"a", "b", "c"}
    assert sum(snapshot.partitions_owned().values()) == Q


def test_dead_and_left_members_own_nothing_but_stay_listed() -> None:
    me = member("a")
    members = [
        me,
        member("b", MemberStatus.DEAD),
        member("c", MemberStatus.LEFT),
        member("d", MemberStatus.SUSPECT),
        member("e", MemberStatus.JOINING),
    ]
    snapshot = build_snapshot(2, me, members, Q)
    assert set(snapshot.ring.members) == {"a", "d"}  # e is joining: a next owner only
    assert [m.name for m in snapshot.members] == ["a", "b", "c", "d", "e"]
    assert all(route != "tcp://b:5555" for route in snapshot.route)


def test_this_node_owns_a_share_even_before_the_others_list_it() -> None:
    me = member("a")
    snapshot = build_snapshot(3, me, [member("b")], Q)
    assert "a" in snapshot.ring.members
    assert None in snapshot.route


def test_a_joining_member_is_a_next_owner_until_it_is_alive() -> None:
    me = member("a")
    members = [me, member("b"), member("c"), member("d", MemberStatus.JOINING)]
    snapshot = build_snapshot(4, me, members, Q, replicas=3)
    assert snapshot.ring.members == ("a", "b", "c")
    assert snapshot.joining == ("d",)
    assert snapshot.next_ring is not None and "d" in snapshot.next_ring.members
    assert snapshot.n_val == 3  # the joiner does not count until it owns
    assert all("d" not in snapshot.replicas(p) for p in range(Q))
    gaining = [p for p in range(Q) if snapshot.next_owners(p) == ("d",)]
    expected = [p for p in range(Q) if "d" in snapshot.next_ring.preference_list(p, 3)]
    assert gaining == expected
    assert 0 < len(gaining) < Q
    assert snapshot.endpoint_of("d") == "tcp://d:5555"  # writes and pulls reach it

    settled = build_snapshot(5, me, [*members[:3], member("d")], Q, replicas=3)
    assert settled.next_ring is None and settled.next_owners(0) == ()
    assert [p for p in range(Q) if "d" in settled.replicas(p)] == gaining


def test_a_second_node_joining_a_first_does_not_raise_n() -> None:
    # While b pulls, a alone owns: W capped at N must be reachable by a alone.
    me = member("a")
    snapshot = build_snapshot(1, me, [me, member("b", MemberStatus.JOINING)], Q, replicas=3)
    assert snapshot.n_val == 1
    assert all(snapshot.next_owners(p) == ("b",) for p in range(Q))


def test_a_joining_node_alone_owns_everything() -> None:
    me = member("a", MemberStatus.JOINING)
    snapshot = build_snapshot(1, me, [me], Q)
    assert snapshot.ring.members == ("a",)
    assert snapshot.next_ring is None


def test_a_write_is_forwarded_to_suspects_last() -> None:
    me = member("z")
    members = [member("a"), member("b", MemberStatus.SUSPECT), member("c"), member("d"), me]
    snapshot = build_snapshot(1, me, members, Q, replicas=3)
    with_b = [p for p in range(Q) if "b" in snapshot.replicas(p)]
    assert with_b
    for partition in with_b:
        order = snapshot.forward_order(partition)
        assert sorted(order) == sorted(snapshot.replicas(partition))
        assert order[-1] == "b"
    without_b = next(p for p in range(Q) if "b" not in snapshot.replicas(p))
    assert snapshot.forward_order(without_b) == snapshot.replicas(without_b)
