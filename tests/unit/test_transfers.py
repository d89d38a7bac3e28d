"""Leave handoff: which partitions go where, and the streaming with flow control."""

from __future__ import annotations

import pytest

from kvactors.core.clocks import HlcStamp
from kvactors.core.handoff import leave_transfers
from kvactors.core.ops import MergeRecord
from kvactors.core.ring import Ring
from kvactors.core.versions import blind_write, state_from_wire
from kvactors.errors import RequestTimeoutError
from kvactors.replication.leave_handoff import LeaveHandoff
from kvactors.storage.memory import MemoryBackend
from kvactors.storage.records import encode_state, read_wire_state
from kvactors.testing import FakeChannel

PARTITIONS = 64
STAYING = ["a", "b", "c"]


def test_a_leaver_hands_each_of_its_partitions_to_the_members_that_gain_it() -> None:
    pairs = leave_transfers("d", STAYING, PARTITIONS, 3)
    before = Ring.build([*STAYING, "d"], partitions=PARTITIONS, replicas=3)
    mine = [p for p in range(PARTITIONS) if "d" in before.preference_list(p, 3)]
    # Three stay, N=3: each partition the leaver had gains the one member it lacked.
    assert sorted(p for p, _ in pairs) == mine
    for partition, target in pairs:
        assert target not in before.preference_list(partition, 3)
        assert target in STAYING


def test_leaving_a_cluster_no_bigger_than_n_moves_nothing() -> None:
    assert leave_transfers("c", ["a", "b"], PARTITIONS, 3) == []
    assert leave_transfers("a", [], PARTITIONS, 3) == []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stored(backend: MemoryBackend, partition: int, count: int) -> dict[bytes, bytes]:
    values = {}
    for number in range(count):
        key = b"p%d-k%d" % (partition, number)
        empty = state_from_wire([[], []])
        state = blind_write(empty.obsolete, "d", b"\xa1v", HlcStamp(1_000 + number, 0, "d"), 1)
        values[key] = encode_state(state)
    backend.open_table(partition).apply(list(values.items()))
    return values


def handoff(
    pairs: list[tuple[int, str]], sizes: dict[int, int], batch: int = 10, concurrency: int = 2
) -> tuple[LeaveHandoff, FakeChannel, Clock]:
    backend = MemoryBackend()
    for partition, count in sizes.items():
        stored(backend, partition, count)
    channel, clock = FakeChannel("d"), Clock()
    driver = LeaveHandoff(
        pairs, backend, channel, concurrency=concurrency, batch=batch, retry=1.0, clock=clock
    )
    return driver, channel, clock


def test_every_key_goes_to_its_target_as_a_merge_in_acknowledged_batches() -> None:
    driver, channel, _ = handoff([(1, "a"), (2, "b"), (3, "c")], {1: 25, 2: 5, 3: 0}, batch=10)
    # What the leaver holds (records are deterministic: the same again in a new backend).
    stored_records = {**stored(MemoryBackend(), 1, 25), **stored(MemoryBackend(), 2, 5)}
    driver.on_tick()
    # Two transfers at a time, one batch each in flight.
    assert sorted({sent.replica for sent in channel.unanswered}) == ["a", "b"]
    assert len(channel.unanswered) == 10 + 5
    merged: dict[str, set[bytes]] = {}
    rounds = 0
    while not driver.finished:
        for sent in channel.unanswered:
            assert not sent.local
            assert isinstance(sent.op, MergeRecord)  # the record's state, as stored
            assert sent.op.wire_state == read_wire_state(stored_records[sent.op.key])
            assert sent.partition == {"a": 1, "b": 2, "c": 3}[sent.replica]
            state_from_wire(sent.op.wire_state)  # a valid state on the wire
            merged.setdefault(sent.replica, set()).add(sent.op.key)
        channel.answer_all()
        driver.on_tick()
        rounds += 1
        assert rounds < 20
    assert len(merged["a"]) == 25 and len(merged["b"]) == 5
    status = driver.status()
    assert (status["transfers"], status["done"], status["waiting"]) == (3, 3, 0)
    assert status["keys_sent"] == 30


def test_a_failed_batch_is_sent_again_after_the_retry_delay() -> None:
    driver, channel, clock = handoff([(1, "a")], {1: 15}, batch=10)
    driver.on_tick()
    assert channel.fail_all(RequestTimeoutError("no answer")) == 10
    driver.on_tick()
    assert channel.unanswered == []  # waits for the retry delay
    clock.now += 1.5
    driver.on_tick()
    assert len(channel.unanswered) == 10  # the same batch again, from its start
    channel.answer_all()
    assert len(channel.unanswered) == 5
    channel.answer_all()
    driver.on_tick()
    assert driver.finished and driver.status()["keys_sent"] == 15


def test_the_running_transfers_report_rate_and_eta() -> None:
    driver, channel, clock = handoff([(1, "a")], {1: 30}, batch=10)
    driver.on_tick()
    clock.now += 2.0
    channel.answer_all()
    (running,) = driver.status()["running"]
    assert (running["partition"], running["to"], running["keys_sent"], running["keys"]) == (
        1,
        "a",
        10,
        30,
    )
    assert running["keys_per_second"] == pytest.approx(5.0)
    assert running["eta_seconds"] == pytest.approx(4.0)


def test_a_finished_transfer_starts_the_next_at_once_not_on_the_next_tick() -> None:
    # 3,000 partitions, empty but the last few: they all finish in one tick (no
    # recursion per empty partition), and a finished one is followed at once.
    pairs = [(partition, "a") for partition in range(3_000)]
    driver, channel, _ = handoff(pairs, {2_997: 3, 2_998: 3, 2_999: 3}, concurrency=1)
    driver.on_tick()
    assert driver.status()["done"] == 2_997
    assert len(channel.unanswered) == 3  # partition 2,997 runs; 2,998 and 2,999 wait
    channel.answer_all()  # 2,997's batch is acknowledged: its transfer ends, 2,998 starts
    assert driver.status()["done"] == 2_998 and len(channel.unanswered) == 3
    channel.answer_all()
    channel.answer_all()
    assert driver.finished  # without a single tick more
