"""Tests for kvactors.replication.hints: keeping hints in a table, and handing them over
once their target owns partitions again.

`HintedHandoff` runs here over a real `MemoryTable` and a real `RingHolder` (snapshots
built with `build_snapshot`, so whether the target owns anything is the ring's word). Its
channel is `kvactors.testing.FakeChannel`, an in-memory recorder: it records every op
sent, and the test answers each one through the target and tag it carries, in any order
it likes. The wall clock is a `FakeClock`. No sockets, no threads, no sleeps.
"""

from __future__ import annotations

import pytest

from kvactors.core.clocks import HlcStamp
from kvactors.core.membership import Member, MemberStatus
from kvactors.core.ops import MergeKey, ReadKey
from kvactors.core.placement import RingHolder, RingSnapshot, build_snapshot
from kvactors.core.versions import (
    EMPTY_STATE,
    KeyState,
    coordinate_write,
    merge_states,
)
from kvactors.errors import UnavailableError
from kvactors.replication.hints import HintedHandoff, HintStats
from kvactors.storage.memory import MemoryTable
from kvactors.testing import FakeChannel, FakeClock, Sent

ME = "a"
TARGET = "c"
PARTITIONS = 16
INTERVAL = 0.5
MAX_AGE = 60.0
START = 1_000.0  # the wall clock's first reading

# -------------------------------------------------------------------------- the fake channel


class Channel(FakeChannel):
    """The shared `FakeChannel` as this node's, with what these tests look for in it."""

    def __init__(self) -> None:
        super().__init__(ME)

    def take_reads(self) -> list[Sent]:
        """The reads not answered yet (which the test now answers): all of this node's."""
        reads = self.take(ReadKey)
        assert all(sent.local for sent in reads), "a hint's key read elsewhere"
        return reads

    def take_merges(self) -> list[Sent]:
        """The merges not answered yet (which the test now answers): all into peers."""
        merges = self.take(MergeKey)
        assert not any(sent.local for sent in merges), "a local merge"
        return merges

    def read_keys(self) -> list[bytes]:
        return [sent.op.key for sent in self.sent if isinstance(sent.op, ReadKey)]

    def merged(self) -> dict[tuple[str, bytes], KeyState]:
        """(member, key) -> the state merged into it."""
        merged: dict[tuple[str, bytes], KeyState] = {}
        for sent in self.sent:
            if isinstance(sent.op, MergeKey):
                assert not sent.local, "a local merge"
                assert (sent.replica, sent.op.key) not in merged, "a key merged twice"
                merged[sent.replica, sent.op.key] = sent.op.state
        return merged


# ------------------------------------------------------------------------- ring and states


def member(name: str, status: MemberStatus = MemberStatus.ALIVE) -> Member:
    return Member(name, f"tcp://{name}:5555", status, 0, 0)


def snapshot(target_status: MemberStatus | None, version: int = 0) -> RingSnapshot:
    """a's view of a, b and the target (`None`: a does not know the target at all)."""
    members = [member(ME), member("b")]
    if target_status is not None:
        members.append(member(TARGET, target_status))
    return build_snapshot(version, member(ME), members, PARTITIONS, replicas=2)


def write_here(base: KeyState, value: bytes | None, wall_ms: int) -> KeyState:
    return coordinate_write(base, ME, base.context, value, HlcStamp(wall_ms, 0, ME))


def key(index: int) -> bytes:
    return b"key:%04d" % index  # 8 bytes: a hint for TARGET takes 1 + 8 + 16 bytes


HINT_SIZE = len(TARGET) + len(key(0)) + 16


def table_entry(target: str, hinted: bytes) -> bytes:
    """The hints table's key of a hint: target NUL key (what a restart reads back)."""
    return target.encode() + b"\x00" + hinted


class World:
    """A handoff with its table, ring, channel, clock and this node's store."""

    def __init__(
        self,
        target_status: MemberStatus | None = MemberStatus.DEAD,
        *,
        max_age: float = MAX_AGE,
        max_bytes: int = 1 << 20,
        batch: int = 1000,
        interval: float = INTERVAL,
        table: MemoryTable | None = None,
        clock: FakeClock | None = None,
    ) -> None:
        self.table = MemoryTable() if table is None else table
        self.ring = RingHolder(snapshot(target_status))
        self.channel = Channel()
        self.clock = FakeClock(START) if clock is None else clock
        self.store: dict[bytes, KeyState] = {}
        self.now = 0.0  # the transport's monotonic time, for on_tick
        self.handoff = HintedHandoff(
            self.table,
            self.ring,
            self.channel,
            self.clock,
            max_age=max_age,
            max_bytes=max_bytes,
            batch=batch,
            interval=interval,
        )

    def set_target(self, status: MemberStatus | None) -> None:
        self.ring.publish(snapshot(status, self.ring.current.version + 1))

    def write(self, index: int, value: bytes, partition: int = 3) -> KeyState:
        """A write here whose copy missed the target: the store changes, a hint is kept."""
        state = write_here(self.store.get(key(index), EMPTY_STATE), value, int(self.clock() * 1000))
        self.store[key(index)] = state
        self.handoff.add(TARGET, partition, key(index))
        return state

    def tick(self, seconds: float = INTERVAL) -> None:
        """Time passes (both clocks), then the transport ticks."""
        self.now += seconds
        self.clock.advance(seconds)
        self.handoff.on_tick(self.now)

    def answer_reads(self) -> int:
        reads = self.channel.take_reads()
        for sent in reads:
            sent.done(self.store.get(sent.op.key, EMPTY_STATE))
        return len(reads)

    def answer_merges(self) -> int:
        merges = self.channel.take_merges()
        for sent in merges:
            sent.done(None)
        return len(merges)

    def deliver_all(self) -> None:
        """Ticks, answering every read and merge, until no hint for the target is left
        (the target must own partitions)."""
        for _ in range(100):
            if TARGET not in self.handoff.pending():
                return
            self.tick()
            self.answer_reads()
            self.answer_merges()
        raise AssertionError("the hints were never delivered")

    def received(self, wanted: bytes) -> KeyState:
        """The join of every state merged into the target for key `wanted`."""
        joined = EMPTY_STATE
        for sent in self.channel.sent:
            if sent.replica == TARGET and isinstance(sent.op, MergeKey) and sent.op.key == wanted:
                joined = merge_states(joined, sent.op.state)
        return joined

    def table_keys(self) -> set[bytes]:
        return {stored for stored, _ in self.table.items()}


# -------------------------------------------------------------------------- keeping hints


def test_a_new_handoff_has_nothing_pending() -> None:
    world = World()
    assert world.handoff.pending() == {}
    assert world.handoff.stats == HintStats()
    assert len(world.table) == 0


def test_one_hint_per_target_and_key_however_many_writes() -> None:
    world = World()
    for _ in range(5):
        world.handoff.add(TARGET, 3, key(1))
    world.handoff.add(TARGET, 3, key(2))
    world.handoff.add("b", 5, key(1))
    world.handoff.add("b", 5, key(1))
    assert world.handoff.pending() == {"b": 1, TARGET: 2}
    assert world.handoff.stats == HintStats(stored=3)
    assert len(world.table) == 3
    assert world.channel.sent == []  # keeping a hint sends nothing


def test_a_new_handoff_over_the_same_table_reloads_the_hints() -> None:
    """As a durable node's restart does: the hints, their partitions and their ages."""
    world = World(MemberStatus.DEAD)
    for index in range(4):
        world.write(index, b"v%d" % index, partition=index + 2)
    world.handoff.add("b", 9, key(7))
    restarted = World(MemberStatus.ALIVE, table=world.table, clock=world.clock)
    restarted.store = world.store
    assert restarted.handoff.pending() == {"b": 1, TARGET: 4}
    restarted.tick()
    reads = {sent.op.key: sent.partition for sent in restarted.channel.sent}
    assert reads == {key(i): i + 2 for i in range(4)} | {key(7): 9}
    restarted.answer_reads()
    restarted.answer_merges()
    assert restarted.handoff.pending() == {}
    # key 7 was never written here: its hint goes without a merge.
    assert set(restarted.channel.merged()) == {(TARGET, key(i)) for i in range(4)}
    assert len(restarted.table) == 0


def test_reloaded_hints_keep_their_age() -> None:
    world = World(max_age=10.0)
    world.write(1, b"old")
    world.clock.advance(6.0)
    restarted = World(max_age=10.0, table=world.table, clock=world.clock)
    restarted.tick(3.0)  # 9 s old: kept
    assert restarted.handoff.pending() == {TARGET: 1}
    restarted.tick(2.0)  # 11 s old: dropped, though this handoff is 5 s old
    assert restarted.handoff.pending() == {}
    assert restarted.handoff.stats.dropped == 1


def test_reloaded_hints_count_against_the_size_bound() -> None:
    world = World(max_bytes=3 * HINT_SIZE)
    for index in range(3):
        world.write(index, b"v")
    restarted = World(max_bytes=3 * HINT_SIZE, table=world.table, clock=world.clock)
    restarted.handoff.add(TARGET, 3, key(9))
    assert restarted.handoff.stats.dropped == 1
    assert restarted.handoff.pending() == {TARGET: 3}


# ---------------------------------------------------------------------- delivering them


# A leaving member owns nothing: it is handing its own data over, and takes no more.
@pytest.mark.parametrize(
    "status", [MemberStatus.DEAD, MemberStatus.LEFT, MemberStatus.LEAVING, None]
)
def test_nothing_is_sent_while_the_target_owns_nothing(status: MemberStatus | None) -> None:
    world = World(status)
    assert world.ring.current.endpoint_of(TARGET) is None
    for index in range(3):
        world.write(index, b"v")
    for _ in range(20):
        world.tick()
    assert world.channel.sent == []
    assert world.handoff.pending() == {TARGET: 3}
    assert len(world.table) == 3


@pytest.mark.parametrize(
    "status",
    [MemberStatus.ALIVE, MemberStatus.SUSPECT, MemberStatus.JOINING],
)
def test_hints_go_to_the_target_once_it_owns_partitions_again(status: MemberStatus) -> None:
    world = World(MemberStatus.DEAD)
    states = {key(i): world.write(i, b"v%d" % i, partition=i) for i in range(5)}
    world.write(2, b"newer", partition=2)  # a second write: still one hint, newest state
    states[key(2)] = world.store[key(2)]
    world.tick()
    assert world.channel.sent == []
    world.set_target(status)
    assert world.ring.current.endpoint_of(TARGET) is not None
    world.tick()
    # Each key is read here first, from its own partition; nothing goes out yet.
    assert [(s.op, s.partition) for s in world.channel.sent] == [
        (ReadKey(key(i)), i) for i in range(5)
    ]
    assert world.answer_reads() == 5
    # Then each key's current state is merged into the target.
    merges = world.channel.unanswered
    assert [(s.replica, s.op, s.partition) for s in merges] == [
        (TARGET, MergeKey(key(i), states[key(i)]), i) for i in range(5)
    ]
    assert world.channel.merged() == {(TARGET, k): state for k, state in states.items()}
    assert world.handoff.pending() == {TARGET: 5}  # not forgotten before the target answers
    assert len(world.table) == 5
    assert world.answer_merges() == 5
    assert world.handoff.pending() == {}
    assert len(world.table) == 0
    assert world.handoff.stats == HintStats(stored=5, delivered=5)
    world.tick()
    world.tick()
    assert len(world.channel.sent) == 10  # nothing more to send


def test_a_key_with_nothing_here_is_forgotten_without_sending() -> None:
    world = World(MemberStatus.ALIVE)
    world.handoff.add(TARGET, 1, key(1))  # e.g. purged since
    world.write(2, b"v")
    world.tick()
    world.answer_reads()
    assert [s.op.key for s in world.channel.unanswered] == [key(2)]  # no merge of key 1
    world.answer_merges()
    assert world.handoff.pending() == {}
    assert len(world.table) == 0
    assert world.handoff.stats.delivered == 2
    assert set(world.channel.merged()) == {(TARGET, key(2))}


def test_a_round_with_nothing_here_sends_nothing_and_forgets_at_once() -> None:
    world = World(MemberStatus.ALIVE)
    for index in range(3):
        world.handoff.add(TARGET, 1, key(index))
    world.tick()
    assert world.answer_reads() == 3
    assert world.channel.unanswered == []
    assert world.handoff.pending() == {}
    assert len(world.table) == 0


def test_a_failed_read_or_merge_keeps_its_hint_for_a_later_round() -> None:
    """The docstring's promise: a hint is forgotten once its state is merged into the
    target (or there is none to send), and only then."""
    world = World(MemberStatus.ALIVE)
    for index in range(4):
        world.write(index, b"v")
    world.tick()
    reads = {s.op.key: s for s in world.channel.take_reads()}
    reads[key(3)].failed(UnavailableError("the partition is restarting"))
    for index in range(3):
        reads[key(index)].done(world.store[key(index)])
    merges = {s.op.key: s for s in world.channel.take_merges()}
    assert set(merges) == {key(0), key(1), key(2)}
    merges[key(0)].done(None)
    merges[key(1)].failed(UnavailableError("c went away again"))
    assert world.handoff.pending() == {TARGET: 4}  # the batch is not over yet
    merges[key(2)].done(None)
    assert world.handoff.pending() == {TARGET: 2}
    assert world.table_keys() == {table_entry(TARGET, key(i)) for i in (1, 3)}
    assert world.handoff.stats.delivered == 2
    # The next round retries exactly the two that failed.
    world.tick()
    assert sorted(s.op.key for s in world.channel.unanswered) == [key(1), key(3)]
    world.answer_reads()
    world.answer_merges()
    assert world.handoff.pending() == {}
    assert len(world.table) == 0
    assert world.handoff.stats == HintStats(stored=4, delivered=4)


def test_a_target_has_one_delivery_at_a_time() -> None:
    world = World(MemberStatus.ALIVE)
    world.write(1, b"v")
    world.tick()
    world.write(2, b"v")  # while the first delivery waits
    for _ in range(5):
        world.tick()
    assert world.channel.read_keys() == [key(1)]
    world.answer_reads()
    world.answer_merges()
    assert world.handoff.pending() == {TARGET: 1}
    world.tick()
    assert world.channel.read_keys() == [key(1), key(2)]


def test_each_target_gets_its_own_delivery() -> None:
    world = World(MemberStatus.ALIVE)
    world.write(1, b"v")
    world.handoff.add("b", 3, key(1))
    world.tick()
    assert [s.op for s in world.channel.unanswered] == [ReadKey(key(1)), ReadKey(key(1))]
    world.answer_reads()
    assert sorted(s.replica for s in world.channel.unanswered) == ["b", TARGET]
    world.answer_merges()
    assert world.handoff.pending() == {}


def test_at_most_batch_keys_per_round() -> None:
    world = World(MemberStatus.ALIVE, batch=2)
    for index in range(5):
        world.write(index, b"v")
    rounds = []
    while world.handoff.pending():
        world.tick()
        rounds.append(world.answer_reads())
        world.answer_merges()
    assert rounds == [2, 2, 1]
    assert sorted(world.channel.read_keys()) == [key(i) for i in range(5)]
    assert world.handoff.stats.delivered == 5


def test_rounds_are_paced_by_the_interval() -> None:
    world = World(MemberStatus.ALIVE, interval=1.0)
    world.write(1, b"v")
    world.handoff.on_tick(10.0)
    assert world.answer_reads() == 1
    world.answer_merges()
    world.write(2, b"v")
    world.handoff.on_tick(10.999)
    assert world.channel.unanswered == []
    world.handoff.on_tick(11.0)
    assert world.channel.read_keys() == [key(1), key(2)]


# ----------------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("room", [2, 3])
def test_a_hint_past_max_bytes_is_dropped_and_not_stored(room: int) -> None:
    world = World(max_bytes=room * HINT_SIZE + 1)
    for index in range(5):
        world.write(index, b"v")
    assert world.handoff.pending() == {TARGET: room}
    assert world.handoff.stats == HintStats(stored=room, dropped=5 - room)
    assert world.table_keys() == {table_entry(TARGET, key(i)) for i in range(room)}
    world.write(0, b"again")  # a key with a hint already: covered, not dropped
    assert world.handoff.stats.dropped == 5 - room


def test_the_size_bound_is_inclusive_and_freed_by_delivery() -> None:
    world = World(MemberStatus.ALIVE, max_bytes=2 * HINT_SIZE)
    world.write(0, b"v")
    world.write(1, b"v")
    world.write(2, b"v")
    assert world.handoff.stats == HintStats(stored=2, dropped=1)
    world.deliver_all()
    world.write(2, b"v")
    world.write(3, b"v")
    assert world.handoff.pending() == {TARGET: 2}
    assert world.handoff.stats.dropped == 1


def test_hints_older_than_max_age_are_dropped_on_the_next_tick() -> None:
    world = World(MemberStatus.DEAD, max_age=10.0)
    world.write(1, b"v")
    world.clock.advance(5.0)
    world.write(2, b"v")
    world.clock.advance(5.0)  # key 1 is exactly max_age old: kept
    world.handoff.on_tick(1.0)
    assert world.handoff.pending() == {TARGET: 2}
    world.clock.advance(0.001)
    assert world.handoff.pending() == {TARGET: 2}  # nothing happens between ticks
    world.handoff.on_tick(2.0)
    assert world.handoff.pending() == {TARGET: 1}
    assert world.handoff.stats.dropped == 1
    assert world.table_keys() == {table_entry(TARGET, key(2))}
    world.clock.advance(5.0)
    world.handoff.on_tick(3.0)
    assert world.handoff.pending() == {}
    assert len(world.table) == 0
    assert world.handoff.stats == HintStats(stored=2, dropped=2)


def test_an_expired_hint_is_not_delivered() -> None:
    world = World(MemberStatus.DEAD, max_age=10.0)
    world.write(1, b"v")
    world.clock.advance(8.0)
    world.write(2, b"v")
    world.clock.advance(4.0)
    world.set_target(MemberStatus.ALIVE)
    world.handoff.on_tick(1.0)
    assert world.channel.read_keys() == [key(2)]
    assert world.handoff.stats.dropped == 1


# ----------------------------------------------- regressions (bugs these tests found)


def test_a_write_during_a_delivery_reaches_the_target() -> None:
    world = World(MemberStatus.ALIVE)
    world.write(1, b"first")
    world.tick()
    world.answer_reads()  # the first state is on its way to the target
    newer = world.write(1, b"second")  # missed the target too
    world.deliver_all()  # the first merge is answered, and any later round runs
    for _ in range(3):
        world.tick()
        world.answer_reads()
        world.answer_merges()
    assert world.received(key(1)) == newer


def test_each_hint_is_counted_once() -> None:
    world = World(MemberStatus.ALIVE, max_age=10.0)
    world.write(1, b"v")
    world.tick()
    world.clock.advance(20.0)
    world.tick()  # expires the hint while its read is unanswered
    world.answer_reads()
    world.answer_merges()
    stats = world.handoff.stats
    pending = sum(world.handoff.pending().values())
    assert stats.stored == stats.delivered + stats.dropped + pending


def test_a_hint_made_again_after_expiring_during_a_delivery_is_kept() -> None:
    world = World(MemberStatus.ALIVE, max_age=10.0)
    world.write(1, b"first")
    world.tick()
    world.answer_reads()  # the first state is on its way to the target
    world.clock.advance(20.0)
    world.tick()  # the hint expires while the merge is unanswered
    newer = world.write(1, b"second")  # a new hint, for a state the target lacks
    world.answer_merges()
    assert world.handoff.pending() == {TARGET: 1}
    world.deliver_all()
    assert world.received(key(1)) == newer
