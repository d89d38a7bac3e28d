"""Peer calls: the cuts of a peer's ops into calls: every call fits the frame the
peer's ROUTER accepts (a larger one is dropped with the connection), and its answer fits
the DEALER's limit."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kvactors.core.ops import wire_bytes
from kvactors.node.peer_calls import CALL_OPS, call_bounds


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
