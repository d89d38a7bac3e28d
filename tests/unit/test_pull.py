"""The source side of a join's pull: pages through partitions within the call's budgets."""

from __future__ import annotations

from typing import Any

import pytest
from _stores import filled_backend  # tests/unit is on the path, as for conftest

from kvactors.core.clocks import HlcStamp
from kvactors.core.versions import EMPTY_STATE, blind_write, state_from_wire
from kvactors.errors import BadRequestError
from kvactors.replication.pull import PARTITIONS_PER_PULL, serve_pull
from kvactors.storage.memory import MemoryBackend
from kvactors.storage.records import encode_state

PARTITIONS = 32


def test_a_pull_pages_through_a_partition_in_key_order() -> None:
    backend = filled_backend({3: 5, 4: 2})
    first = serve_pull(backend, PARTITIONS, {"partitions": [[3, b""], [4, b""]], "max_keys": 3})
    (p3, items3, left3), (p4, items4, left4) = first["parts"]
    assert (p3, left3) == (3, 2) and [k for k, _ in items3] == [b"k3-000", b"k3-001", b"k3-002"]
    assert (p4, items4, left4) == (4, [], 2)  # the budget is for the whole call
    assert state_from_wire(items3[0][1]).winner.value == b"v0"  # type: ignore[union-attr]
    rest = serve_pull(backend, PARTITIONS, {"partitions": [[3, b"k3-002"]], "max_keys": 3})
    ((_, items, left),) = rest["parts"]
    assert [k for k, _ in items] == [b"k3-003", b"k3-004"] and left == 0
    empty = serve_pull(backend, PARTITIONS, {"partitions": [[9, b""]], "max_keys": 3})
    assert empty["parts"] == [[9, [], 0]]


def test_a_pull_answer_stays_within_its_byte_budget_but_always_carries_a_key() -> None:
    backend = MemoryBackend()
    table = backend.open_table(3)
    for index in range(3):
        state = blind_write(EMPTY_STATE.obsolete, "a", b"v" * 400_000, HlcStamp(1, 0, "a"), 1)
        table.apply([(b"k3-%03d" % index, encode_state(state))])
    args = {"partitions": [[3, b""]], "max_keys": 100}
    # A record holds its value twice (the winner up front): 800 KB a key.
    ((_, items, left),) = serve_pull(backend, PARTITIONS, args, max_bytes=1_000_000)["parts"]
    assert [key for key, _ in items] == [b"k3-000"] and left == 2
    ((_, items, left),) = serve_pull(backend, PARTITIONS, args, max_bytes=100)["parts"]
    assert len(items) == 1 and left == 2  # bigger than the budget, and still sent
    ((_, items, left),) = serve_pull(backend, PARTITIONS, args, max_bytes=3_000_000)["parts"]
    assert len(items) == 3 and left == 0


@pytest.mark.parametrize(
    "args",
    [
        {"partitions": [[3, b""]]},
        {"partitions": [[3, b""]], "max_keys": 0},
        {"partitions": [[PARTITIONS, b""]], "max_keys": 5},
        {"partitions": [[3, "text"]], "max_keys": 5},
        {"partitions": "all", "max_keys": 5},
        {"partitions": [[p, b""] for p in range(PARTITIONS_PER_PULL + 1)], "max_keys": 5},
    ],
)
def test_a_malformed_pull_is_refused(args: dict[str, Any]) -> None:
    with pytest.raises(BadRequestError):
        serve_pull(MemoryBackend(), PARTITIONS, args)
