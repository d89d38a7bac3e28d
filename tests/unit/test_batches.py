"""The client's cutting of many-key calls into requests a node takes."""

from __future__ import annotations

from kvactors.client.batches import batches_of
from kvactors.net.protocol import DEFAULT_MAX_BATCH_ITEMS


def test_batches_keep_the_order_and_hold_at_most_a_nodes_batch_each() -> None:
    items = list(range(2 * DEFAULT_MAX_BATCH_ITEMS + 1))
    batches = batches_of(items)
    assert [len(batch) for batch in batches] == [DEFAULT_MAX_BATCH_ITEMS] * 2 + [1]
    assert [item for batch in batches for item in batch] == items


def test_no_items_make_no_batch_and_a_full_one_stays_whole() -> None:
    assert batches_of([]) == []
    assert batches_of(["k"] * DEFAULT_MAX_BATCH_ITEMS) == [["k"] * DEFAULT_MAX_BATCH_ITEMS]
