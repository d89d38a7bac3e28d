"""The bounds one client connection lives under, as pure logic: its held replies
(`ReplyBacklog`, bounded in bytes) and its requests in flight (`InFlight`), each at,
just under and just over its limit; and the sizes of a node's socket options."""

from __future__ import annotations

import pytest

from kvactors.config import NodeConfig
from kvactors.errors import KVActorsError, OverloadedError
from kvactors.net.peer_sockets import SocketOptions, client_send_hwm_for, peer_frame_bytes
from kvactors.net.protocol import default_max_frame_bytes
from kvactors.net.reply_backlog import (
    FULL,
    GONE,
    HELD_REPLY_OVERHEAD,
    SENT,
    ReplyBacklog,
    held_size,
)
from kvactors.node.inflight import SLOW_CONNECTION, InFlight, Pending

ALICE, BOB = b"\x00alice", b"\x00bob"


def reply(connection: bytes, payload_bytes: int) -> list[bytes]:
    return [connection, b"r" * payload_bytes]


def sized(connection: bytes, size: int) -> list[bytes]:
    """A reply whose held size is exactly `size`."""
    frames = reply(connection, size - len(connection) - HELD_REPLY_OVERHEAD)
    assert held_size(frames) == size
    return frames


class Peer:
    """A fake connection: takes `room` replies, then is full (or has gone)."""

    def __init__(self, room: int = 0) -> None:
        self.room = room
        self.gone = False
        self.got: list[list[bytes]] = []

    def try_send(self, frames: list[bytes]) -> int:
        if self.gone:
            return GONE
        if self.room == 0:
            return FULL
        self.room -= 1
        self.got.append(frames)
        return SENT


# -- the byte budget ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_size_offset", "held"),
    [(-1, True), (0, True), (1, False)],
    ids=["just under", "at", "just over"],
)
def test_a_connection_holds_replies_up_to_its_budget(last_size_offset: int, held: bool) -> None:
    budget = 10_000
    backlog = ReplyBacklog(budget)
    assert backlog.hold(sized(ALICE, 4_000))
    last = sized(ALICE, budget - 4_000 + last_size_offset)
    assert backlog.hold(last) is held
    assert backlog.held_replies == (2 if held else 1)
    assert backlog.held_bytes == 4_000 + (held_size(last) if held else 0)
    assert backlog.dropped == (0 if held else 1)
    # Past the budget the reply is dropped and the connection is slow: its requests
    # are refused until what is held has gone out.
    assert (ALICE in backlog.slow) is not held


def test_each_connection_has_a_budget_of_its_own() -> None:
    backlog = ReplyBacklog(1_000)
    assert backlog.hold(sized(ALICE, 1_000))
    assert not backlog.hold(sized(ALICE, 200))
    assert backlog.hold(sized(BOB, 1_000))
    assert backlog.slow == {ALICE}
    assert set(backlog.held) == {ALICE, BOB}


def test_a_reply_larger_than_the_budget_alone_is_dropped_but_leaves_nothing_to_wait_for() -> None:
    backlog = ReplyBacklog(1_000)
    assert not backlog.hold(sized(ALICE, 1_001))
    assert backlog.dropped == 1
    assert backlog.held == {}
    # Nothing held would ever drain and clear the mark: the connection is not slow.
    assert backlog.slow == set()


def test_tiny_replies_count_their_overhead() -> None:
    backlog = ReplyBacklog(10 * (HELD_REPLY_OVERHEAD + len(ALICE)))
    for _ in range(10):
        assert backlog.hold([ALICE, b""])
    assert not backlog.hold([ALICE, b""])


# -- a secure client's key: one budget over its connections -----------------------------

KEY = b"key:alice's public key"


def test_a_key_shares_one_budget_over_its_connections_and_is_slow_on_all_of_them() -> None:
    backlog = ReplyBacklog(1_000)
    assert backlog.hold(sized(ALICE, 600), KEY)
    # A second connection of the same key: per connection it would fit; per key it does not.
    assert not backlog.hold(sized(BOB, 600), KEY)
    assert backlog.slow == {KEY}
    assert backlog.accounts == {KEY: 600}
    assert backlog.hold(sized(BOB, 400), KEY)  # exactly at the key's budget
    assert backlog.accounts == {KEY: 1_000}
    # Another key is not held to it.
    assert backlog.hold(sized(b"\x00carol", 1_000), b"key:carol's")
    assert backlog.slow == {KEY}


def test_a_key_stays_slow_until_every_one_of_its_connections_has_drained() -> None:
    backlog = ReplyBacklog(1_000)
    backlog.hold(sized(ALICE, 500), KEY)
    backlog.hold(sized(BOB, 500), KEY)
    assert not backlog.hold(sized(BOB, 200), KEY)
    alice, bob = Peer(room=1), Peer()
    backlog.retry(lambda frames: (alice if frames[0] == ALICE else bob).try_send(frames))
    assert backlog.accounts == {KEY: 500} and backlog.slow == {KEY}  # BOB's still held
    bob.room = 1
    backlog.retry(lambda frames: (alice if frames[0] == ALICE else bob).try_send(frames))
    assert backlog.accounts == {} and backlog.slow == set() and backlog.held == {}


def test_a_connection_keeps_its_key_for_replies_sent_without_one() -> None:
    """An error reply names no account: behind the key's held replies it counts there."""
    backlog = ReplyBacklog(1_000)
    backlog.hold(sized(ALICE, 900), KEY)
    assert not backlog.hold(sized(ALICE, 200))
    assert backlog.slow == {KEY}
    assert backlog.accounts == {KEY: 900}


def test_a_gone_connection_frees_its_share_of_the_key() -> None:
    backlog = ReplyBacklog(1_000)
    backlog.hold(sized(ALICE, 600), KEY)
    backlog.hold(sized(BOB, 300), KEY)
    assert not backlog.hold(sized(BOB, 300), KEY)
    alice, bob = Peer(), Peer()
    alice.gone = True
    backlog.retry(lambda frames: (alice if frames[0] == ALICE else bob).try_send(frames))
    assert backlog.accounts == {KEY: 300} and set(backlog.held) == {BOB}
    assert backlog.slow == {KEY}  # BOB has not read yet
    assert backlog.hold(sized(BOB, 700), KEY)


# -- retrying ----------------------------------------------------------------------------


def test_held_replies_go_out_in_order_as_room_frees_and_then_the_connection_is_not_slow() -> None:
    backlog = ReplyBacklog(1_000)
    replies = [
        [ALICE, bytes([index]) * (300 - len(ALICE) - HELD_REPLY_OVERHEAD)] for index in range(3)
    ]
    for frames in replies:
        assert backlog.hold(frames)
    assert not backlog.hold(sized(ALICE, 300))  # 3 x 300 held: no room for a fourth
    assert backlog.slow == {ALICE}
    peer = Peer(room=2)
    assert backlog.retry(peer.try_send) == 2
    assert peer.got == replies[:2]
    assert backlog.held_replies == 1
    assert backlog.held_bytes == 300
    assert backlog.slow == {ALICE}  # still waiting for one
    assert backlog.retry(peer.try_send) == 0  # full: nothing goes, nothing lost
    peer.room = 5
    assert backlog.retry(peer.try_send) == 1
    assert peer.got == replies
    assert backlog.held == {} and backlog.slow == set()
    assert backlog.held_bytes == 0 and backlog.held_replies == 0


def test_a_connection_gone_has_its_replies_freed_at_once() -> None:
    backlog = ReplyBacklog(1_000)
    for _ in range(3):
        backlog.hold(sized(ALICE, 300))
    backlog.hold(sized(ALICE, 300))  # dropped: slow
    backlog.hold(sized(BOB, 300))
    alice, bob = Peer(), Peer(room=1)
    alice.gone = True
    sent = backlog.retry(lambda frames: (alice if frames[0] == ALICE else bob).try_send(frames))
    assert sent == 1
    assert backlog.freed == 3
    assert set(backlog.held) == set() and backlog.slow == set()
    assert backlog.held_bytes == 0 and backlog.held_replies == 0


def test_clear_drops_everything() -> None:
    backlog = ReplyBacklog(1_000)
    backlog.hold(sized(ALICE, 600))
    backlog.hold(sized(ALICE, 600))
    backlog.clear()
    assert backlog.held == {} and backlog.slow == set() and backlog.held_bytes == 0


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ReplyBacklog(0)


# -- requests in flight per connection ------------------------------------------------------


class _Request(Pending):
    __slots__ = ("outcome",)

    def __init__(self, connection: bytes | None) -> None:
        super().__init__(1, deadline=100.0, connection=connection)
        self.outcome: object = None

    def answer(self) -> None:
        self.outcome = self.results[0]

    def refuse(self, error: KVActorsError) -> None:
        self.outcome = error


def _admit(inflight: InFlight, connection: bytes | None) -> _Request:
    inflight.admit(connection)
    request = _Request(connection)
    inflight.track(request, own_timeout=False)
    return request


@pytest.mark.parametrize(("in_flight", "admitted"), [(2, True), (3, False)], ids=["under", "at"])
def test_a_connection_may_have_max_per_connection_requests_in_flight(
    in_flight: int, admitted: bool
) -> None:
    inflight = InFlight(100, 5.0, lambda: 0.0, max_per_connection=3)
    for _ in range(in_flight):
        _admit(inflight, ALICE)
    if admitted:
        _admit(inflight, ALICE)  # the limit-th request
        assert inflight.per_connection[ALICE] == 3
    else:
        with pytest.raises(OverloadedError, match="max_inflight_per_connection"):
            inflight.admit(ALICE)  # one over
        assert inflight.connection_refusals == 1 and inflight.overloaded == 1
    # Another connection, and the embedded client, are not held to ALICE's count.
    _admit(inflight, BOB)
    _admit(inflight, None)
    assert set(inflight.per_connection) == {ALICE, BOB}


def test_a_connection_gets_its_share_back_as_its_requests_end() -> None:
    inflight = InFlight(100, 5.0, lambda: 0.0, max_per_connection=2)
    answered, failed = _admit(inflight, ALICE), _admit(inflight, ALICE)
    inflight.fill(answered, 0, "value")
    _admit(inflight, ALICE)
    inflight.fail(failed, OverloadedError("no"))
    inflight.expire(1_000.0)  # the third times out
    assert inflight.per_connection == {}
    assert inflight.count == 0
    _admit(inflight, ALICE)
    _admit(inflight, ALICE)


def test_a_key_shares_one_bound_across_its_connections() -> None:
    """Secure: the requests of one key count together, on however many connections."""
    inflight = InFlight(100, 5.0, lambda: 0.0, max_per_connection=2)
    key = b"key:alice's public key"
    for connection in (ALICE, BOB):  # two connections of one key, one request each
        inflight.admit(connection, key)
        request = _Request(key)  # counted under the key, as the frontend does
        inflight.track(request, own_timeout=False)
    assert inflight.per_connection == {key: 2}
    with pytest.raises(OverloadedError, match="this key has 2 requests in flight"):
        inflight.admit(b"a third connection", key)
    # Another key, on a connection of its own, is not held to it.
    inflight.admit(b"carol", b"key:carol's")
    # A slow connection is still refused by its own routing id, whatever its key; a
    # slow key on every connection it has.
    slow = InFlight(100, 5.0, lambda: 0.0, slow_connections={ALICE})
    with pytest.raises(OverloadedError, match="unread replies"):
        slow.admit(ALICE, key)
    slow_key = InFlight(100, 5.0, lambda: 0.0, slow_connections={key})
    for connection in (ALICE, BOB):
        with pytest.raises(OverloadedError, match="unread replies"):
            slow_key.admit(connection, key)
    slow_key.admit(BOB, b"key:carol's")


def test_a_slow_connection_is_refused_until_it_is_not() -> None:
    slow: set[bytes] = {ALICE}
    inflight = InFlight(100, 5.0, lambda: 0.0, slow_connections=slow)
    with pytest.raises(OverloadedError) as refused:
        inflight.admit(ALICE)
    assert str(refused.value) == SLOW_CONNECTION
    assert inflight.slow_refusals == 1 and inflight.overloaded == 1
    _admit(inflight, BOB)
    _admit(inflight, None)  # the embedded client has no connection
    slow.clear()
    _admit(inflight, ALICE)


# -- socket options ----------------------------------------------------------------------


def test_the_peer_frame_holds_a_merge_of_n_states_at_their_bound() -> None:
    config = NodeConfig(replicas=3, max_state_bytes=4 << 20)
    options = SocketOptions.from_config(config)
    client_frame = default_max_frame_bytes(config.max_key_bytes, config.max_value_bytes)
    assert options.max_message_bytes == client_frame
    assert options.peer_frame_bytes >= 3 * (4 << 20) + config.max_key_bytes
    assert options.peer_frame_bytes == peer_frame_bytes(config, client_frame)
    # Small states: never less than a client frame (a forwarded write is one).
    small = NodeConfig(replicas=1, read_quorum=1, write_quorum=1, max_state_bytes=1024)
    assert peer_frame_bytes(small, client_frame) == client_frame


def test_the_client_send_hwm_holds_about_the_backlog_budget_of_the_largest_replies() -> None:
    assert client_send_hwm_for(NodeConfig()) == 16  # 16 MiB of 1 MiB values
    assert client_send_hwm_for(NodeConfig(max_value_bytes=64 * 1024)) == 256
    assert client_send_hwm_for(NodeConfig(max_reply_backlog_bytes=1 << 20)) == 16  # the floor
    assert client_send_hwm_for(NodeConfig(max_value_bytes=16)) == 1024  # the ceiling
