"""Tests for kvactors.node.inflight: a client request of one key entered in one call
(`InFlight.enter`) and settled by its owner (`settle`), against the same bounds and
deadlines as requests admitted and tracked step by step."""

from __future__ import annotations

import pytest

from kvactors.errors import KVActorsError, OverloadedError, UnavailableError
from kvactors.node.inflight import SLOW_CONNECTION, InFlight, Pending
from kvactors.testing import FakeClock

ALICE, BOB = b"alice", b"bob"


class _Request(Pending):
    """A request that answers itself (as the frontend's requests of one key do)."""

    __slots__ = ("refused",)

    def __init__(self, connection: bytes) -> None:
        self.done = False
        self.connection = connection
        self.refused: KVActorsError | None = None

    def refuse(self, error: KVActorsError) -> None:
        self.refused = error


def _enter(inflight: InFlight, routing_id: bytes, account: bytes | None = None) -> _Request:
    request = _Request(routing_id if account is None else account)
    inflight.enter(request, routing_id, account)
    return request


def test_enter_counts_a_request_against_the_node_and_its_connection() -> None:
    inflight = InFlight(10, 5.0, FakeClock(100.0).now)
    first, _ = _enter(inflight, ALICE), _enter(inflight, ALICE)
    _enter(inflight, BOB)
    assert inflight.count == 3
    assert inflight.per_connection == {ALICE: 2, BOB: 1}
    assert first.deadline == 105.0
    inflight.settle(first)
    assert first.done
    assert inflight.count == 2
    assert inflight.per_connection == {ALICE: 1, BOB: 1}


def test_enter_refuses_past_the_node_bound() -> None:
    inflight = InFlight(2, 5.0, FakeClock().now)
    _enter(inflight, ALICE)
    _enter(inflight, BOB)
    with pytest.raises(OverloadedError, match="2 requests in flight"):
        _enter(inflight, b"carol")
    assert inflight.overloaded == 1
    assert inflight.count == 2
    assert b"carol" not in inflight.per_connection


def test_enter_refuses_past_a_connections_bound_and_a_keys() -> None:
    inflight = InFlight(100, 5.0, FakeClock().now, max_per_connection=2)
    _enter(inflight, ALICE)
    _enter(inflight, ALICE)
    with pytest.raises(OverloadedError, match="this connection has 2"):
        _enter(inflight, ALICE)
    _enter(inflight, BOB)  # another connection is not held to ALICE's count
    key = b"key:carol's"
    _enter(inflight, b"carol-1", key)
    _enter(inflight, b"carol-2", key)
    with pytest.raises(OverloadedError, match="this key has 2"):
        _enter(inflight, b"carol-3", key)
    assert inflight.connection_refusals == 2
    assert inflight.per_connection == {ALICE: 2, BOB: 1, key: 2}


def test_enter_refuses_a_slow_connection_and_a_closing_node() -> None:
    slow: set[bytes] = {ALICE}
    inflight = InFlight(100, 5.0, FakeClock().now, slow_connections=slow)
    with pytest.raises(OverloadedError) as refused:
        _enter(inflight, ALICE)
    assert str(refused.value) == SLOW_CONNECTION
    assert inflight.slow_refusals == 1
    slow.clear()
    _enter(inflight, ALICE)  # read its replies: admitted again
    inflight.close(UnavailableError("closing"))
    with pytest.raises(UnavailableError, match="shutting down"):
        _enter(inflight, BOB)


def test_entered_requests_time_out_at_their_deadlines() -> None:
    clock = FakeClock(0.0)
    inflight = InFlight(100, 5.0, clock.now)
    answered, waiting = _enter(inflight, ALICE), _enter(inflight, ALICE)
    patient = _Request(BOB)
    inflight.enter(patient, BOB, None, timeout=30.0)
    inflight.settle(answered)
    inflight.expire(4.9)
    assert waiting.refused is None and inflight.count == 2
    inflight.expire(5.0)
    assert waiting.refused is not None and waiting.refused.code == "timeout"
    assert answered.refused is None  # answered before its deadline: dropped, not timed out
    assert inflight.timeouts == 1
    assert patient.refused is None and patient.deadline == 30.0
    inflight.expire(30.0)
    assert patient.refused is not None and inflight.timeouts == 2
    assert inflight.count == 0 and inflight.per_connection == {}
