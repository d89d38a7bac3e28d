"""Tests for kvactors.core.handoff: transfer plans, source spread, join and leave plans."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvactors.core.handoff import Plan, Transfer, plan_change, plan_transfers, pull_sources
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


def by_source(plan: Plan) -> dict[str, int]:
    """Transfers per sending member."""
    return dict(Counter(t.source for t in plan.transfers))


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
    assert len(by_source(plan)) == 3
    assert max(by_source(plan).values()) <= 0.40 * len(plan.transfers)


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
    assert max(by_source(plan).values()) <= 1.6 * average + 1


@PROPERTY
@given(membership_changes(), st.data())
def test_only_senders_send_and_lost_partitions_are_reported(
    change: tuple[list[str], list[str]], data: st.DataObject
) -> None:
    old, new = rings(*change)
    everyone = sorted(set(change[0]) | set(change[1]))
    alive = frozenset(data.draw(st.lists(st.sampled_from(everyone), unique=True)))
    plan = plan_transfers(old, new, N, senders=alive)
    assert all(t.source in alive for t in plan.transfers)
    lost = {p for p, _ in gains(old, new) if not set(old.preference_list(p, N)) & alive}
    assert set(plan.unrecoverable) == lost
    assert list(plan.unrecoverable) == sorted(lost)
    assert {(t.partition, t.target) for t in plan.transfers} == {
        (p, m) for p, m in gains(old, new) if p not in lost
    }


def test_replacing_every_member_with_none_alive_loses_every_partition() -> None:
    old, new = rings(NAME_POOL[:3], NAME_POOL[3:6])
    plan = plan_transfers(old, new, N, senders=frozenset(NAME_POOL[3:6]))
    assert plan.transfers == ()
    assert plan.unrecoverable == tuple(range(Q))
    # With the old members alive, every partition streams to all three newcomers.
    assert len(plan_transfers(old, new, N).transfers) == N * Q


def test_a_leaver_sends_only_where_no_stayer_remains() -> None:
    old, new = rings(NAME_POOL[:4], NAME_POOL[1:4])
    plan = plan_transfers(old, new, N)
    assert plan.transfers
    assert NAME_POOL[0] not in by_source(plan)
    # Dropping to one member: the only old replica still a replica is the survivor itself.
    old, new = rings(NAME_POOL[:3], NAME_POOL[3:4] + NAME_POOL[:1])
    sources = by_source(plan_transfers(old, new, N))
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


def test_plan_counts_partitions_and_names_each_targets_sources() -> None:
    plan = Plan(
        transfers=(Transfer(1, "a", "b"), Transfer(1, "a", "c"), Transfer(2, "b", "c")),
        unrecoverable=(5,),
    )
    assert plan.partitions_moving == 2
    assert plan.sources_for("c") == {1: "a", 2: "b"}
    assert plan.sources_for("b") == {1: "a"}
    assert plan.sources_for("a") == {}


# ------------------------------------------------------------------------------ member sets


@PROPERTY
@given(membership_changes())
def test_a_change_of_members_plans_between_the_rings_every_node_builds(
    change: tuple[list[str], list[str]],
) -> None:
    old, new = change
    plan = plan_change(old, new, partitions=Q, replicas=N)
    assert plan == plan_transfers(*rings(old, new), N)


def test_nobody_left_after_a_change_moves_nothing() -> None:
    assert plan_change(["a", "b"], [], partitions=Q, replicas=N) == Plan((), ())


@PROPERTY
@given(st.data())
def test_a_leaver_as_the_only_sender_hands_over_exactly_the_partitions_it_held(
    data: st.DataObject,
) -> None:
    names = data.draw(names_of(data.draw(st.integers(2, 9))))
    leaver, staying = names[0], names[1:]
    plan = plan_change(names, staying, partitions=Q, replicas=N, senders={leaver})
    old, new = rings(names, staying)
    held = {p for p in range(Q) if leaver in old.preference_list(p, N)}
    assert {t.source for t in plan.transfers} <= {leaver}
    assert {(t.partition, t.target) for t in plan.transfers} == {
        (p, member) for p, member in gains(old, new) if p in held
    }
    # Partitions the new ring reshuffles without the leaver in them need another sender.
    assert set(plan.unrecoverable) == {p for p, _ in gains(old, new) if p not in held}


# ------------------------------------------------------------------------------ join pulls


@PROPERTY
@given(st.data())
def test_a_joiner_pulls_each_partition_it_gains_from_an_alive_replica_when_one_is(
    data: st.DataObject,
) -> None:
    names = data.draw(names_of(data.draw(st.integers(1, 8))))
    joiner = data.draw(st.sampled_from([n for n in NAME_POOL if n not in names]))
    alive = frozenset(data.draw(st.lists(st.sampled_from(names), unique=True)))
    old, new = rings(names, [*names, joiner])
    sources = pull_sources(old, new, N, joiner=joiner, alive=alive)
    assert set(sources) == {p for p, member in gains(old, new) if member == joiner}
    for partition, source in sources.items():
        holders = set(old.preference_list(partition, N))
        assert source in holders
        if holders & alive:
            assert source in alive
    # With everyone alive, the joiner's share of the one plan, in partition order.
    everyone = pull_sources(old, new, N, joiner=joiner, alive=frozenset(names))
    assert everyone == plan_transfers(old, new, N).sources_for(joiner)
    assert list(everyone) == sorted(everyone)
