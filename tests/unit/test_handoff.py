"""Tests for kvactors.core.handoff: transfer plans, source spread, scheduling."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.core.handoff import Plan, Transfer, plan_transfers, schedule
from kvactors.core.ring import (
    DEFAULT_PARTITIONS,
    DEFAULT_REPLICAS,
    LOAD_LIMIT,
    Ring,
    moved_replicas,
)

N = DEFAULT_REPLICAS
# Small rings keep planning fast; the movement bound needs the default Q (see test_ring.py).
Q = 256

# A fixed pool, so that each name's placement is memoised across examples.
_pool_rng = random.Random(6)
NAME_POOL = [f"node-{_pool_rng.getrandbits(40):010x}" for _ in range(60)]

# Derandomized: the spread and movement bounds are statistical (they hold on the
# examples drawn here, not on every member set), so every run draws the same ones.
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)


def names_of(size: int, exclude: frozenset[str] = frozenset()) -> st.SearchStrategy[list[str]]:
    pool = [name for name in NAME_POOL if name not in exclude]
    return st.lists(st.sampled_from(pool), min_size=size, max_size=size, unique=True)


@st.composite
def membership_changes(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Old and new member lists of 3..12 members: some leave, some join (at least one change)."""
    old = draw(names_of(draw(st.integers(3, 12))))
    leaving = draw(st.integers(1 if len(old) == 12 else 0, len(old) - 3))
    joining = draw(st.integers(0 if leaving else 1, 12 - (len(old) - leaving)))
    new = old[leaving:] + draw(names_of(joining, exclude=frozenset(old)))
    return old, new


def rings(old: list[str], new: list[str], partitions: int = Q) -> tuple[Ring, Ring]:
    return Ring.build(old, partitions=partitions), Ring.build(new, partitions=partitions)


def gains(old: Ring, new: Ring) -> set[tuple[int, str]]:
    """(partition, member) pairs where the member is a new replica of the partition."""
    return {
        (p, member)
        for p in range(old.partitions)
        for member in set(new.preference_list(p, N)) - set(old.preference_list(p, N))
    }


# ------------------------------------------------------------------------------ plans


@PROPERTY
@given(membership_changes())
def test_transfer_count_equals_moved_replicas(change: tuple[list[str], list[str]]) -> None:
    old, new = rings(*change)
    plan = plan_transfers(old, new, N)
    assert len(plan.transfers) == moved_replicas(old, new, N)
    assert plan.unrecoverable == ()


@PROPERTY
@given(membership_changes())
def test_each_new_replica_gets_one_transfer_from_an_old_replica(
    change: tuple[list[str], list[str]],
) -> None:
    old, new = rings(*change)
    plan = plan_transfers(old, new, N)
    pairs = [(t.partition, t.target) for t in plan.transfers]
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == gains(old, new)
    for t in plan.transfers:
        before, after = old.preference_list(t.partition, N), new.preference_list(t.partition, N)
        assert t.source in before
        assert t.target in after and t.target not in before
        # A source that stays a replica is preferred whenever one exists.
        if set(before) & set(after):
            assert t.source in after
    assert list(plan.transfers) == sorted(plan.transfers, key=lambda t: (t.partition, t.target))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(st.data())
def test_a_join_moves_at_most_1_10_the_ideal_share(data: st.DataObject) -> None:
    """The same target as test_ring.py's, at the default Q where the ring meets it."""
    names = data.draw(names_of(data.draw(st.integers(3, 12))))
    newcomer = data.draw(st.sampled_from([n for n in NAME_POOL if n not in names]))
    old, new = rings(names, [*names, newcomer], partitions=DEFAULT_PARTITIONS)
    plan = plan_transfers(old, new, N)
    ideal = N * DEFAULT_PARTITIONS / (len(names) + 1)
    assert len(plan.transfers) <= LOAD_LIMIT * ideal
    assert plan.partitions_moving <= len(plan.transfers)


@PROPERTY
@given(st.data())
def test_a_fourth_member_joining_three_draws_evenly_on_the_three(data: st.DataObject) -> None:
    """Each of the three old members could send about 2/3 of the partitions (it stays a
    replica of those), so a perfect spread gives each 1/3 of the transfers. The load-based
    choice measured at most 0.342 over 200 seeded joins; 0.40 leaves a margin over that.
    Choices blind to load fail it: the first stayer by name (about 2/3 on one member), a
    single sender (all), and, within Hypothesis' examples, the first stayer in preference
    order and a hash of (partition, target, candidate) (both seen above 0.40)."""
    names = data.draw(names_of(4))
    old, new = rings(names[:3], names)
    plan = plan_transfers(old, new, N)
    assert len(plan.by_source()) == 3
    assert max(plan.by_source().values()) <= 0.40 * len(plan.transfers)


@PROPERTY
@given(st.data())
def test_any_single_join_spreads_sources_near_the_average(data: st.DataObject) -> None:
    """With more members each partition has only two stayers to choose from, so perfect
    balance is out of reach: the load-based choice measured at most 1.47x the average over
    1500 seeded joins of 3..12 members (never within one transfer of the bound below).
    Choosing per partition without regard to load (the first stayer, or a hash of the
    partition, target and candidate) reaches about 2.1x, and the bound, 1.6x the average
    plus one transfer for the rounding of small plans, fails them."""
    names = data.draw(names_of(data.draw(st.integers(3, 12))))
    newcomer = data.draw(st.sampled_from([n for n in NAME_POOL if n not in names]))
    old, new = rings(names, [*names, newcomer])
    plan = plan_transfers(old, new, N)
    average = len(plan.transfers) / len(names)
    assert max(plan.by_source().values()) <= 1.6 * average + 1


@PROPERTY
@given(membership_changes(), st.data())
def test_only_alive_members_send_and_lost_partitions_are_reported(
    change: tuple[list[str], list[str]], data: st.DataObject
) -> None:
    old, new = rings(*change)
    everyone = sorted(set(change[0]) | set(change[1]))
    alive = frozenset(data.draw(st.lists(st.sampled_from(everyone), unique=True)))
    plan = plan_transfers(old, new, N, alive=alive)
    assert all(t.source in alive for t in plan.transfers)
    lost = {p for p, _ in gains(old, new) if not set(old.preference_list(p, N)) & alive}
    assert set(plan.unrecoverable) == lost
    assert list(plan.unrecoverable) == sorted(lost)
    assert {(t.partition, t.target) for t in plan.transfers} == {
        (p, m) for p, m in gains(old, new) if p not in lost
    }


def test_replacing_every_member_with_none_alive_loses_every_partition() -> None:
    old, new = rings(NAME_POOL[:3], NAME_POOL[3:6])
    plan = plan_transfers(old, new, N, alive=frozenset(NAME_POOL[3:6]))
    assert plan.transfers == ()
    assert plan.unrecoverable == tuple(range(Q))
    # With the old members alive, every partition streams to all three newcomers.
    assert len(plan_transfers(old, new, N).transfers) == N * Q


def test_a_leaver_sends_only_where_no_stayer_remains() -> None:
    old, new = rings(NAME_POOL[:4], NAME_POOL[1:4])
    plan = plan_transfers(old, new, N)
    assert plan.transfers
    assert NAME_POOL[0] not in plan.by_source()
    # Dropping to one member: the only old replica still a replica is the survivor itself.
    old, new = rings(NAME_POOL[:3], NAME_POOL[3:4] + NAME_POOL[:1])
    sources = plan_transfers(old, new, N).by_source()
    assert sources == {NAME_POOL[0]: Q}


def test_a_ring_shrinking_below_n_loses_slots_without_transfers() -> None:
    old, new = rings(NAME_POOL[:3], NAME_POOL[:2])
    assert plan_transfers(old, new, N).transfers == ()
    assert moved_replicas(old, new, N) == Q


def test_rings_of_different_sizes_or_negative_n_are_refused() -> None:
    with pytest.raises(ValueError, match="partitions"):
        plan_transfers(Ring.build(["a"], partitions=64), Ring.build(["a"], partitions=128), N)
    with pytest.raises(ValueError, match="negative"):
        plan_transfers(Ring.build(["a"], partitions=64), Ring.build(["b"], partitions=64), -1)


def test_plan_counts_and_bytes() -> None:
    plan = Plan(
        transfers=(Transfer(1, "a", "b"), Transfer(1, "a", "c"), Transfer(2, "b", "c")),
        unrecoverable=(5,),
    )
    assert plan.partitions_moving == 2
    assert plan.by_target() == {"b": 1, "c": 2}
    assert plan.by_source() == {"a": 2, "b": 1}
    # Partition 1 is sent twice, partition 3 not at all, partition 2 is missing: empty.
    assert plan.bytes_estimate({1: 100, 3: 1000}) == 200
    assert plan.bytes_estimate({1: 100, 2: 7}) == 207
    remaining = plan.without([Transfer(1, "a", "c")])
    assert remaining.transfers == (Transfer(1, "a", "b"), Transfer(2, "b", "c"))
    assert remaining.unrecoverable == (5,)


# ------------------------------------------------------------------------------ scheduling

A_X, A_Y, B_X, B_Y = (
    Transfer(0, "a", "x"),
    Transfer(1, "a", "y"),
    Transfer(2, "b", "x"),
    Transfer(3, "b", "y"),
)
SQUARE = Plan(transfers=(A_X, A_Y, B_X, B_Y), unrecoverable=())


def test_schedule_prefers_transfers_on_idle_members() -> None:
    assert schedule(SQUARE, (), 2) == (A_X, B_Y)
    assert schedule(SQUARE, (A_Y,), 2) == (B_X,)
    assert schedule(SQUARE, (), 1) == (A_X,)


def test_schedule_fills_spare_slots_when_every_member_is_busy() -> None:
    assert schedule(SQUARE, (), 4) == (A_X, A_Y, B_X, B_Y)
    assert schedule(SQUARE, (A_X, B_Y), 3) == (A_Y,)


def test_schedule_doubles_up_on_the_least_busy_members() -> None:
    a_x_again, b_x = Transfer(1, "a", "x"), Transfer(2, "b", "x")
    plan = Plan(transfers=(A_X, a_x_again, b_x), unrecoverable=())
    # Both pending transfers share x with the running one; only b_x spares a as well.
    assert schedule(plan, (A_X,), 2) == (b_x,)
    assert schedule(plan, (A_X,), 3) == (a_x_again, b_x)


def test_schedule_respects_the_limit_and_refuses_a_negative_one() -> None:
    assert schedule(SQUARE, (), 0) == ()
    assert schedule(SQUARE, (A_X, B_Y), 2) == ()
    with pytest.raises(ValueError, match="negative"):
        schedule(SQUARE, (), -1)


def assert_good_schedule(
    plan: Plan, running: set[Transfer], limit: int, started: tuple[Transfer, ...]
) -> None:
    pending = [t for t in plan.transfers if t not in running]
    assert len(set(started)) == len(started)
    assert not set(started) & running
    assert [t for t in pending if t in started] == list(started)  # plan order
    assert len(started) == max(0, min(limit - len(running), len(pending)))
    busy = [name for t in (*running, *started) for name in (t.source, t.target)]
    doubled = {name for name in busy if busy.count(name) > 1}
    started_doubled = [t for t in started if {t.source, t.target} & doubled]
    if started_doubled:
        # Sharing a member was unavoidable: every pending transfer not started touches one.
        for t in pending:
            if t not in started:
                assert t.source in busy or t.target in busy


@PROPERTY
@given(membership_changes(), st.integers(1, 8), st.data())
def test_schedule_keeps_the_limit_and_spreads_over_members(
    change: tuple[list[str], list[str]], limit: int, data: st.DataObject
) -> None:
    plan = plan_transfers(*rings(*change), N)
    running = set(data.draw(st.lists(st.sampled_from(plan.transfers), max_size=limit)))
    started = schedule(plan, running, limit)
    assert_good_schedule(plan, running, limit, started)
    assert schedule(plan, running, limit) == started


@settings(max_examples=30, deadline=None, derandomize=True)
@given(membership_changes(), st.integers(1, 6), st.randoms(use_true_random=False))
def test_repeated_scheduling_drains_the_plan(
    change: tuple[list[str], list[str]], limit: int, rng: random.Random
) -> None:
    # Q=64: the loop runs once per transfer, and 64 partitions already give dozens.
    plan = plan_transfers(*rings(*change, partitions=64), N)
    running: set[Transfer] = set()
    finished: list[Transfer] = []
    for _ in range(len(plan.transfers) + 1):
        remaining = plan.without(finished)
        started = schedule(remaining, running, limit)
        assert_good_schedule(remaining, running, limit, started)
        running |= set(started)
        if not running:
            break
        done = rng.choice(sorted(running, key=lambda t: (t.partition, t.target)))
        running.remove(done)
        finished.append(done)
    assert not running
    assert sorted(finished, key=lambda t: (t.partition, t.target)) == list(plan.transfers)
