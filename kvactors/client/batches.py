"""Cutting a many-key call into batches a node takes in one request each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from kvactors.net.protocol import DEFAULT_MAX_BATCH_ITEMS

__all__ = ["batches_of"]

T = TypeVar("T")


def batches_of(items: Sequence[T]) -> list[list[T]]:
    """`items` in order, cut into lists of at most DEFAULT_MAX_BATCH_ITEMS: a node
    refuses a request with more items than its `max_batch_items`, whose default that is."""
    size = DEFAULT_MAX_BATCH_ITEMS
    return [list(items[start : start + size]) for start in range(0, len(items), size)]
