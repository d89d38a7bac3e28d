"""Join handoff: the pull a joining node runs (served by pull.serve_pull), and dropping
old copies after the switch (stale_copies)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _stores import filled_backend  # tests/unit is on the path, as for conftest

from kvactors.core.membership import Member, MemberStatus
from kvactors.core.ops import Forget
from kvactors.core.placement import RingHolder, build_snapshot
from kvactors.errors import KVActorsError, RequestTimeoutError
from kvactors.replication.join_handoff import JoinHandoff
from kvactors.replication.pull import PULL, serve_pull
from kvactors.replication.stale_copies import StaleCopies
from kvactors.storage.memory import MemoryBackend
from kvactors.testing import FakeChannel, Sent

PARTITIONS = 32


# -- the joining side -----------------------------------------------------------------------


def member(name: str, status: MemberStatus = MemberStatus.ALIVE) -> Member:
    return Member(name, f"tcp://{name}:1", status, 0, 0)


def joining_ring(*, joined: bool = False, dead: str | None = None) -> RingHolder:
    me = member("d", MemberStatus.ALIVE if joined else MemberStatus.JOINING)
    others = [member(n, MemberStatus.DEAD if n == dead else MemberStatus.ALIVE) for n in "abc"]
    return RingHolder(build_snapshot(1, me, [*others, me], PARTITIONS, replicas=2))


class Channel(FakeChannel):
    """The joiner's (d's) channel: the shared `FakeChannel`, serving pulls on demand."""

    def __init__(self) -> None:
        super().__init__("d")

    @property
    def merges(self) -> list[Sent]:
        """The local ops not acknowledged yet: the pull's merges, the dropped copies."""
        assert all(sent.local for sent in self.unanswered), "a replica op left this node"
        return self.unanswered

    def serve(self, backends: dict[str, MemoryBackend]) -> int:
        """Answer every call from the named source's backend, then ack every merge."""
        calls, self.calls = self.calls, []
        for call in calls:
            assert call.op == PULL
            source = call.endpoint.removeprefix("tcp://").removesuffix(":1")
            call.settle(serve_pull(backends[source], PARTITIONS, call.args), None)
        self.ack_merges()
        return len(calls)

    def ack_merges(self) -> None:
        self.answer_all()


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def handoff(ring: RingHolder, channel: Channel, **options: Any) -> JoinHandoff:
    options.setdefault("concurrency", 4)
    options.setdefault("batch_keys", 3)
    return JoinHandoff("d", ring, channel, replicas=2, **options)


def test_the_joiner_pulls_exactly_its_share_in_batches_with_at_most_concurrency_calls() -> None:
    ring = joining_ring()
    snapshot = ring.current
    share = [p for p in range(PARTITIONS) if snapshot.next_owners(p) == ("d",)]
    assert share
    source_data = {p: 4 for p in range(PARTITIONS)}
    backends = {name: filled_backend(source_data) for name in "abc"}
    channel = Channel()
    join = handoff(ring, channel)
    join.on_tick()
    rounds = 0
    while not join.finished:
        assert len(channel.calls) <= 4  # calls open at once
        assert all(len(call.args["partitions"]) <= 64 for call in channel.calls)
        assert all(call.args["max_keys"] == 3 for call in channel.calls)
        assert channel.serve(backends) or join.finished
        rounds += 1
        assert rounds < 1_000
    status = join.status()
    assert status["partitions"] == status["done"] == len(share)
    assert status["keys_received"] == 4 * len(share)  # each key once, none of other partitions
    assert not channel.merges  # every merge acknowledged


def test_merges_land_in_the_pulled_partition_and_a_failed_pull_resumes_at_its_cursor() -> None:
    ring = joining_ring()
    backends = {name: filled_backend(dict.fromkeys(range(PARTITIONS), 5)) for name in "abc"}
    channel = Channel()
    clock = Clock()
    join = handoff(ring, channel, concurrency=1, clock=clock, retry=1.0)
    join.on_tick()
    endpoint, _, args, settle = channel.calls.pop()
    partition, cursor = args["partitions"][0]
    assert cursor == b""
    source = endpoint.removeprefix("tcp://").removesuffix(":1")
    settle(serve_pull(backends[source], PARTITIONS, args), None)  # 3 keys of the first
    # One merge for the partition's answer, of its first 3 keys.
    assert [(m.partition, [key for key, _ in m.op.items]) for m in channel.merges] == [
        (partition, [b"k%d-%03d" % (partition, i) for i in range(3)])
    ]
    assert not channel.calls  # the next call waits for the merges (flow control)
    channel.ack_merges()
    _, _, again, settle = channel.calls.pop()
    assert [partition, b"k%d-002" % partition] in again["partitions"]
    settle(None, RequestTimeoutError("no answer"))
    assert join.status()["failed_calls"] == 1
    join.on_tick()
    assert all(call.endpoint != endpoint for call in channel.calls)  # it waits `retry`
    for _ in range(3):  # the other sources fail too, until every source waits
        failing, channel.calls = channel.calls, []
        for call in failing:
            call.settle(None, RequestTimeoutError("no answer"))
        join.on_tick()
    assert not channel.calls
    clock.now += 1.5
    join.on_tick()
    resumed = [
        pair
        for call in channel.calls
        if call.endpoint == endpoint
        for pair in call.args["partitions"]
    ]
    assert [partition, b"k%d-002" % partition] in resumed


def test_a_dead_source_is_replaced_by_another_replica() -> None:
    ring = joining_ring()
    channel = Channel()
    join = handoff(ring, channel, concurrency=64)
    join.on_tick()
    asked_of = {call.endpoint for call in channel.calls}
    gone = sorted(asked_of)[0].removeprefix("tcp://").removesuffix(":1")
    channel.calls.clear()  # the calls to it never answer... and it is declared dead
    ring.publish(joining_ring(dead=gone).current)
    join2 = handoff(ring, channel, concurrency=64)
    join2.on_tick()
    assert all(f"tcp://{gone}:1" != call.endpoint for call in channel.calls)


def test_partitions_whose_every_source_is_down_stay_wanted_until_one_answers() -> None:
    # Both old replicas of some of its partitions are suspected (they still own them):
    # those must still be pulled, from a replica once it answers, never owned empty.
    me = member("d", MemberStatus.JOINING)
    members = [
        member("a", MemberStatus.SUSPECT),
        member("b", MemberStatus.SUSPECT),
        member("c"),
        me,
    ]
    ring = RingHolder(build_snapshot(1, me, members, PARTITIONS, replicas=2))
    share = [p for p in range(PARTITIONS) if ring.current.next_owners(p) == ("d",)]
    channel = Channel()
    join = handoff(ring, channel, concurrency=64)
    join.on_tick()
    assert join.status()["partitions"] == len(share)
    asked = {pair[0]: call.endpoint for call in channel.calls for pair in call.args["partitions"]}
    assert set(asked) == set(share)
    stranded = [p for p, e in asked.items() if e != "tcp://c:1"]
    assert stranded, "the ring here has partitions only suspects replicate"
    backends = {name: filled_backend(dict.fromkeys(range(PARTITIONS), 2)) for name in "abc"}
    while channel.serve(backends):  # the suspects answer: everything arrives
        join.on_tick()
    assert join.pulled


def test_catch_up_runs_after_the_settle_time_and_until_a_round_repairs_nothing() -> None:
    ring = joining_ring()
    backends = {name: MemoryBackend() for name in "abc"}  # empty partitions: pulled at once
    channel = Channel()
    clock = Clock()
    exchanges: list[tuple[str, list[int], Callable[[KVActorsError | None], None]]] = []
    repaired = [0]

    def exchange(peer: str, _endpoint: str, partitions: list[int], then: Any) -> None:
        exchanges.append((peer, partitions, then))

    join = handoff(ring, channel, clock=clock, catch_up=(exchange, lambda: repaired[0]), settle=2.0)
    join.on_tick()
    while channel.serve(backends):
        pass
    assert join.pulled and not join.finished
    assert not exchanges  # not before `settle`
    clock.now += 2.5
    join.on_tick()
    pulled = {p for _, partitions, _ in exchanges for p in partitions}
    assert pulled == {p for p in range(PARTITIONS) if ring.current.next_owners(p)}
    repaired[0] = 3  # round 1 repairs three keys: another round
    round_1, exchanges[:] = list(exchanges), []
    for _, _, then in round_1:
        then(None)
    assert exchanges and not join.finished
    round_2, exchanges[:] = list(exchanges), []
    for _, _, then in round_2:
        then(None)  # round 2 repairs nothing
    assert join.finished and not exchanges


# -- dropping old copies --------------------------------------------------------------------


def test_copies_are_dropped_only_once_settled_for_the_delay_and_only_if_unchanged() -> None:
    me = member("d")
    members = [member("a"), member("b"), member("c"), me]
    ring = RingHolder(build_snapshot(1, me, members, PARTITIONS, replicas=2))
    mine = {p for p in range(PARTITIONS) if "d" in ring.current.replicas(p)}
    backend = filled_backend(dict.fromkeys(range(PARTITIONS), 2))
    channel = Channel()
    clock = Clock()
    stale = StaleCopies("d", ring, backend, channel, delay=5.0, clock=clock)
    stale.on_tick()
    clock.now += 4.0
    stale.on_tick()
    assert not channel.merges  # not settled for 5 s yet
    clock.now += 1.5
    stale.on_tick()
    dropped = {sent.partition for sent in channel.merges}
    assert dropped == set(range(PARTITIONS)) - mine
    assert all(isinstance(sent.op, Forget) for sent in channel.merges)

    joining = [*members, member("e", MemberStatus.JOINING)]
    ring.publish(build_snapshot(2, me, joining, PARTITIONS, replicas=2))
    channel.take()
    clock.now += 60
    stale.on_tick()
    stale.on_tick()
    assert not channel.merges  # never while somebody joins


def test_never_dropped_with_a_negative_delay() -> None:
    ring = joining_ring(joined=True)
    backend = filled_backend(dict.fromkeys(range(PARTITIONS), 1))
    channel = Channel()
    clock = Clock()
    stale = StaleCopies("d", ring, backend, channel, delay=-1, clock=clock)
    for _ in range(3):
        clock.now += 100
        stale.on_tick()
    assert not channel.merges


def test_the_pull_keeps_to_its_rate() -> None:
    ring = joining_ring()
    backends = {name: filled_backend(dict.fromkeys(range(PARTITIONS), 400)) for name in "abc"}
    channel = Channel()
    clock = Clock()
    join = handoff(ring, channel, concurrency=16, batch_keys=100, rate=200.0, clock=clock)
    received = []
    for _ in range(40):  # 20 s at 0.5 s a tick
        join.on_tick()
        channel.serve(backends)
        received.append(join.status()["keys_received"])
        clock.now += 0.5
    # 200 keys a second, plus at most one batch of burst: never ahead of the rate.
    for tick, keys in enumerate(received):
        assert keys <= 200 * 0.5 * tick + 100, (tick, keys)
    assert received[-1] >= 200 * 15  # and it keeps going at about that rate


def test_copies_are_kept_while_this_node_has_hints_to_deliver() -> None:
    me = member("d")
    members = [member("a"), member("b"), member("c"), me]
    ring = RingHolder(build_snapshot(1, me, members, PARTITIONS, replicas=2))
    backend = filled_backend(dict.fromkeys(range(PARTITIONS), 2))
    channel = Channel()
    clock = Clock()
    hints = [True]
    stale = StaleCopies(
        "d", ring, backend, channel, delay=5.0, holding=lambda: hints[0], clock=clock
    )
    for _ in range(5):
        stale.on_tick()
        clock.now += 3.0
    assert not channel.merges  # hint delivery reads these copies: they stay
    hints[0] = False
    stale.on_tick()
    clock.now += 5.5
    stale.on_tick()
    assert channel.merges


def test_nothing_to_pull_when_every_member_is_joining() -> None:
    me = member("d", MemberStatus.JOINING)
    ring = RingHolder(build_snapshot(1, me, [me, member("e", MemberStatus.JOINING)], PARTITIONS))
    join = handoff(ring, Channel())
    assert join.finished  # somebody must own the keys: the joiner does, at once
    alone = RingHolder(build_snapshot(1, me, [me], PARTITIONS))
    assert not handoff(alone, Channel()).finished  # nobody answered yet: not a join
