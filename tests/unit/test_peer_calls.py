"""Peer calls: the cuts of a peer's ops into calls: every call fits the frame the
peer's ROUTER accepts (a larger one is dropped with the connection), and its answer fits
the DEALER's limit; and a peer's answer to a read is checked like any input."""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any, cast

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from kvactors.core.membership import Member, MemberStatus
from kvactors.core.ops import wire_bytes
from kvactors.core.placement import RingHolder, build_snapshot
from kvactors.net.rpc import MARKER, RpcClient, decode_call, encode_result
from kvactors.node.peer_calls import CALL_OPS, PeerCalls, call_bounds
from kvactors.testing import FakeTransport

if TYPE_CHECKING:
    from kvactors.net.transport import Transport


def merge(key: bytes, value_bytes: int) -> list[Any]:
    version = [b"v" * value_bytes, "node-1", 7, ["node-1", 6], 1_700_000_000_000, 0, None]
    return ["merge", key, [["node-1", 6], [version]]]


def entries(ops: list[list[Any]]) -> list[Any]:
    return [(None, index, op) for index, op in enumerate(ops)]


def test_small_ops_go_in_calls_of_at_most_call_ops() -> None:
    ops = entries([["read", b"k%d" % n] for n in range(2 * CALL_OPS + 1)])
    assert call_bounds(ops, 1 << 20) == [
        (0, CALL_OPS),
        (CALL_OPS, 2 * CALL_OPS),
        (2 * CALL_OPS, 2 * CALL_OPS + 1),
    ]


def test_large_values_are_cut_by_size_and_one_op_alone_is_always_a_call() -> None:
    ops = entries([merge(b"a", 700_000), merge(b"b", 700_000), merge(b"c", 3_000_000)])
    assert call_bounds(ops, 1_000_000) == [(0, 1), (1, 2), (2, 3)]
    assert call_bounds(entries([merge(b"z", 5_000_000)]), 1_000_000) == [(0, 1)]


@given(
    st.lists(
        st.one_of(
            st.builds(merge, st.binary(min_size=1, max_size=8), st.integers(0, 400_000)),
            st.builds(lambda k: ["read", k], st.binary(min_size=1, max_size=8)),
            st.builds(
                lambda k, v: ["write", k, v, None, None],
                st.binary(min_size=1, max_size=8),
                st.binary(max_size=300),
            ),
            st.builds(
                lambda k, v: ["put", k, v],
                st.binary(min_size=1, max_size=8),
                st.binary(max_size=400_000),
            ),
        ),
        max_size=200,
    )
)
def test_the_cuts_cover_every_op_once_in_order_and_keep_each_call_bounded(
    ops: list[list[Any]],
) -> None:
    limit = 1_000_000
    bounds = call_bounds(entries(ops), limit)
    if not ops:
        assert bounds == []  # no call at all: an empty store call is refused
        return
    assert bounds[0][0] == 0 and bounds[-1][1] == len(ops)
    for (_, end), (start, _) in itertools.pairwise(bounds):
        assert end == start  # contiguous: every op once, in order
    for start, end in bounds:
        assert 0 < end - start <= CALL_OPS
        size = sum(wire_bytes(op) for op in ops[start:end])
        assert end - start == 1 or size <= limit


# -- a peer's answer is checked like any input -------------------------------------------


class _Target:
    def __init__(self) -> None:
        self.done: list[Any] = []
        self.failed: list[Any] = []

    def replica_done(self, tag: Any, result: Any) -> None:
        self.done.append(result)

    def replica_failed(self, tag: Any, error: Any) -> None:
        self.failed.append(error)


def _read_answered_with(wall_ms: int) -> _Target:
    """One read for member b, answered by b with a state whose one version is stamped at
    `wall_ms`; what the read's target heard."""
    transport = FakeTransport()
    client = RpcClient(cast("Transport", transport), clock=lambda: 0.0, default_timeout=5.0)
    me = Member("a", "tcp://127.0.0.1:1", MemberStatus.ALIVE, 0, 0)
    peer = Member("b", "tcp://127.0.0.1:2", MemberStatus.ALIVE, 0, 0)
    ring = RingHolder(build_snapshot(1, me, [me, peer], 8, 2))
    scheduled: list[Any] = []
    calls = PeerCalls(client, ring, 5.0, 1 << 20, scheduled.append, max_clock_skew=60.0)
    target = _Target()
    calls.to_replica("b", ["read", b"k"], target, None)  # type: ignore[arg-type]
    for flush in scheduled:
        flush()
    ((endpoint, frames),) = transport.to_peers
    call_id = decode_call(frames[1:]).call_id  # type: ignore[union-attr]
    version = [msgpack.packb("v"), "b", 7, ["b", 6], wall_ms, 0, None]
    answer = {"results": [[["b", 6], [version]]]}
    client.on_reply(endpoint, [MARKER, encode_result(call_id, answer)])
    return target


def test_a_read_answer_stamped_past_the_clock_skew_fails_the_read() -> None:
    now_ms = int(time.time() * 1000)
    fine = _read_answered_with(now_ms + 50_000)  # ahead, but within 60 s
    assert len(fine.done) == 1 and not fine.failed
    forged = _read_answered_with(now_ms + 3_600_000)  # an hour ahead
    assert not forged.done
    assert len(forged.failed) == 1 and "ahead" in str(forged.failed[0])
